//! PEER, the parameter-efficient expert retrieval layer of He 2024 ("Mixture of A Million Experts", §2).
//!
//! Notation, used the same way in every file of the PEER path (docs/ARCHITECTURE.md repeats it):
//!
//! | symbol  | meaning                                                   | in code                      |
//! |---------|-----------------------------------------------------------|------------------------------|
//! | N       | experts in the pool, a perfect square                     | `num_experts`                |
//! | n = √N  | sub-keys per half of a product key                        | `sub_keys`                   |
//! | h       | retrieval heads                                           | `heads`                      |
//! | k       | experts retrieved per head                                | `top_k`                      |
//! | m = h·k | experts per token, all heads together                     | `m`                          |
//! | d       | width of the residual stream, of a token and of an expert | `d_model`, `d`               |
//! | key dim | width of one head's query (two halves of key dim/2)       | `key_dim`                    |
//! | dh      | key dim/2: width of a query half and of a sub-key         | `dh`, `half`                 |
//! | T       | tokens in the batch                                       | `tokens`                     |
//! | z       | an expert's pre-activation u_iᵀx                          | `z`                          |
//!
//! A pool of N experts, each a single hidden neuron (§2, "Parameter Efficient Experts"): expert i is
//! `e_i(x) = σ(u_iᵀ x) · v_i` with `u_i, v_i ∈ R^d`, stored as the rows of two tables U, V `[N, d]`. A token
//! reaches its experts the way a product-key memory reaches its slots (Lample et al. 2019). For one head:
//!
//! 1. query: `q(x) = W_q x` (the query network, batch-normalised as in PKM);
//! 2. retrieval (eq. 1): `I = T_k(q(x)ᵀ k_i)`, the k experts whose keys score highest. The keys are the
//!    N = n² concatenations `k_(i,j) = [c_i ; c'_j]` of two sub-key tables C, C' `[n, key_dim/2]`
//!    (§2, "Product Key Retrieval"), so `q·k_(i,j) = q₁·c_i + q₂·c'_j` and the top k are among the k×k
//!    pairs of the top k of each half: O(n + k²) work, not O(N);
//! 3. gates (eq. 2): `g_i(x) = s(q(x)ᵀ k_i)` for i ∈ I, s = softmax over the k scores (or sigmoid, [`Gate`]);
//! 4. mixture (eq. 3): `f(x) = Σ_{i∈I} g_i(x) · e_i(x)`.
//!
//! Multi-head retrieval (§2, "Multi-Head Retrieval"): h independent query networks share the sub-keys
//! and the expert pool, and their outputs are summed, `f(x) = Σ_h f^h(x)`: effectively an MLP with m = h·k
//! hidden neurons chosen per token from N. Here the h queries come from one linear map `d → h·key_dim`,
//! and the sum over heads is a single weighted sum over the token's m experts, done by the fused
//! [`ops::peer_experts`].
//!
//! Where to read on: steps 1–3 are the [`ProductKeyRouter`] (`nn/product_key_router.rs`), which PKM uses
//! too, configured by the [`ProductKeyConfig`] part of [`PeerConfig`] that PKM's config shares; step 4 is [`ops::peer_experts`] (`ops/peer_experts.rs`), whose arithmetic is written token by token
//! in `kernels/peer_reference.rs` and computed, in expert order for speed, by `kernels/peer.rs`.
//!
//! PEER's query batch norm pools its statistics over the heads ([`QueryNorm::SharedByHeads`]) unless
//! `query_bn_per_head` asks for PKM's per-head ones ([`QueryNorm::PerHead`]).
//!
//! Initialisation (the paper does not give one; chosen so activations keep unit scale): the router's
//! (see [`ProductKeyRouter`]); U ~ N(0, 1/d) so that `u_iᵀx` has unit variance; V ~ N(0, 1/(h·k)) so that
//! the sum of the m expert outputs has O(1) entries.

use crate::error::Error;
use crate::kernels::Float;
use crate::nn::ffw::positive;
use crate::nn::product_key_router::{Gate, ProductKeyConfig, ProductKeyRouter, QueryNorm};
use crate::nn::{FfwOut, Module, UsageTracker};
use crate::ops::{self, BatchNormStats, ExpertActivation};
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

pub struct Peer<T: Float = f32> {
    config: PeerConfig,
    /// Steps 1–3: `{name}.query`, `{name}.query_bn` (`[key_dim]`, shared by the heads) and the sub-keys
    /// `{name}.keys1`, `{name}.keys2` `[√N, key_dim/2]`.
    pub router: ProductKeyRouter<T>,
    /// `{name}.u`, `{name}.v`: the expert pool, `[N, d_model]` tables read by row.
    pub u: Param<T>,
    pub v: Param<T>,
    /// Which experts the layer selects, once switched on.
    pub usage: UsageTracker,
}

impl<T: Float> Peer<T> {
    pub fn new(config: &PeerConfig, name: &str, rng: &mut Rng) -> Self {
        let (d, keys) = (config.keys.d_model, &config.keys);
        let query_norm = if config.query_bn_per_head { QueryNorm::PerHead } else { QueryNorm::SharedByHeads };
        let router = ProductKeyRouter::new(keys, config.sub_keys(), query_norm, config.gate, name, rng);
        let u = Tensor::randn(&[config.num_experts, d], (d as f64).powf(-0.5), rng);
        let v = Tensor::randn(&[config.num_experts, d], ((keys.heads * keys.top_k) as f64).powf(-0.5), rng);
        Peer {
            config: config.clone(),
            router,
            u: Param::new(format!("{name}.u"), ParamKind::Table, u),
            v: Param::new(format!("{name}.v"), ParamKind::Table, v),
            usage: UsageTracker::new(config.num_experts),
        }
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// `x [tokens, d_model] → [tokens, d_model]`. `training` selects batch statistics (and updates the
    /// running ones) in the query batch norm; evaluation uses the running statistics, so tokens stay
    /// independent.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> FfwOut<T> {
        // 1–3. Query network, product-key retrieval of each head's top-k experts (eq. 1), their gates (eq. 2).
        let (gates, expert_ids) = self.router.forward(tape, x, training); // [tokens, heads·k], [tokens·heads·k]
        self.usage.record(&expert_ids, gates.value().data());
        // 4. Experts, summed over the k experts of every head (eq. 3) and over the heads.
        let (u, v) = (tape.param(&self.u), tape.param(&self.v));
        let y = ops::peer_experts(tape, x, &u, &v, &gates, &expert_ids, self.config.activation);
        FfwOut { y, aux_loss: None }
    }
}

impl<T: Float> Module<T> for Peer<T> {
    fn batch_norm_stats(&self) -> Vec<(String, &BatchNormStats<T>)> {
        self.router.batch_norm_stats()
    }

    fn batch_norm_stats_mut(&mut self) -> Vec<(String, &mut BatchNormStats<T>)> {
        self.router.batch_norm_stats_mut()
    }

    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.router.params();
        params.extend([&self.u, &self.v]);
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.router.params_mut();
        params.extend([&mut self.u, &mut self.v]);
        params
    }
}

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct PeerConfig {
    /// Query heads h, top k, key width and query batch norm, written inline in config files.
    #[cfg_attr(feature = "io", serde(flatten))]
    pub keys: ProductKeyConfig,
    /// N, the experts in the pool; a perfect square n², n sub-keys per half.
    pub num_experts: usize,
    /// With `query_batch_norm`: statistics, gain and bias for each channel of each head (h·key_dim, as PKM
    /// does) instead of key_dim channels pooled over the heads. Default false (pooled).
    #[cfg_attr(feature = "io", serde(default))]
    pub query_bn_per_head: bool,
    /// s in eq. 2, how a head's k scores become gates; written `"router"` in config files. Default softmax.
    #[cfg_attr(feature = "io", serde(rename = "router", default = "default_gate"))]
    pub gate: Gate,
    /// σ of the experts, written `"gelu"` or `"relu"`. Default GELU.
    #[cfg_attr(feature = "io", serde(default = "default_activation", with = "activation_name"))]
    pub activation: ExpertActivation,
}

#[cfg(feature = "io")]
fn default_gate() -> Gate {
    Gate::Softmax
}

#[cfg(feature = "io")]
fn default_activation() -> ExpertActivation {
    ExpertActivation::Gelu
}

/// `ExpertActivation` (an op-level enum without serde) as a lowercase name in config files.
#[cfg(feature = "io")]
mod activation_name {
    use crate::ops::ExpertActivation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(activation: &ExpertActivation, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match activation {
            ExpertActivation::Gelu => "gelu",
            ExpertActivation::Relu => "relu",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ExpertActivation, D::Error> {
        match String::deserialize(deserializer)?.as_str() {
            "gelu" => Ok(ExpertActivation::Gelu),
            "relu" => Ok(ExpertActivation::Relu),
            other => {
                Err(serde::de::Error::custom(format!("unknown activation {other:?}, expected \"gelu\" or \"relu\"")))
            }
        }
    }
}

impl PeerConfig {
    pub fn validate(&self) -> Result<(), Error> {
        positive("peer.num_experts", self.num_experts)?;
        if self.num_experts > u32::MAX as usize {
            return Err(Error::Invalid(format!("peer.num_experts: {} does not fit in u32 ids", self.num_experts)));
        }
        let n = self.sub_keys();
        if n * n != self.num_experts {
            return Err(Error::Invalid(format!("peer.num_experts: {} is not a perfect square", self.num_experts)));
        }
        self.keys.validate("peer", n, "√num_experts")
    }

    /// n = ⌊√N⌋, the sub-keys per half (exactly √N for a valid config).
    pub fn sub_keys(&self) -> usize {
        let mut n = (self.num_experts as f64).sqrt() as usize;
        while n * n > self.num_experts {
            n -= 1;
        }
        while (n + 1) * (n + 1) <= self.num_experts {
            n += 1;
        }
        n
    }
}
