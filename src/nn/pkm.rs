//! Product-key memory (Lample et al. 2019, "Large Memory Layers with Product Keys"): a table of N = n²
//! value vectors, of which each token reads a softmax-weighted handful.
//!
//! Per head h the token's query `q_h(x)` (a linear map, batch-normalised as in §3.2 of that paper, with
//! statistics for every channel of every head) finds its top-k of the n² product keys without scoring them
//! all (§3.1), and the k scores go through a softmax: the [`ProductKeyRouter`], shared with PEER. The
//! weights pick the k selected rows of the value table; head outputs are summed (§3.2, multi-head memory).
//! PEER ([`crate::nn::Peer`]) replaces these value vectors by single-neuron experts.
//!
//! Simplification: the sub-key tables are shared by all heads (as in PEER); Lample et al. give each head
//! its own keys. The heads still differ through their queries.
//!
//! Initialisation: the router's (see [`ProductKeyRouter`]); values N(0, 1/d_model) (as in the reference code).

use crate::kernels::Float;
use crate::nn::ffw::positive;
use crate::nn::product_key_router::{Gate, ProductKeyRouter, ProductKeySpec, QueryNorm};
use crate::nn::{FfwOut, Module, UsageTracker};
use crate::ops::{self, BatchNormStats};
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct PkmConfig {
    /// Width of the residual stream; a config file may leave it out (the model's `d_model` is used).
    #[cfg_attr(feature = "io", serde(default))]
    pub d_model: usize,
    /// n, the sub-keys per half; the memory has N = n² slots. Written `num_keys` in config files.
    #[cfg_attr(feature = "io", serde(rename = "num_keys"))]
    pub sub_keys: usize,
    pub heads: usize,
    /// Slots read per head (must not exceed n).
    pub top_k: usize,
    /// Query width per head; even, split in two halves of key_dim/2.
    pub key_dim: usize,
    /// Batch-normalise the queries (Lample et al. §3.2: it keeps the key usage spread). Default true.
    #[cfg_attr(feature = "io", serde(default = "default_true"))]
    pub query_batch_norm: bool,
}

#[cfg(feature = "io")]
pub(crate) fn default_true() -> bool {
    true
}

impl PkmConfig {
    pub fn validate(&self) -> Result<(), String> {
        positive("pkm.d_model", self.d_model)?;
        positive("pkm.num_keys", self.sub_keys)?;
        positive("pkm.heads", self.heads)?;
        positive("pkm.top_k", self.top_k)?;
        positive("pkm.key_dim", self.key_dim)?;
        if self.key_dim % 2 != 0 {
            return Err(format!("pkm.key_dim: {} is odd; the query is split in two halves", self.key_dim));
        }
        if self.top_k > self.sub_keys {
            return Err(format!("pkm.top_k: {} exceeds num_keys ({})", self.top_k, self.sub_keys));
        }
        if self.sub_keys.checked_mul(self.sub_keys).is_none_or(|n| n > u32::MAX as usize) {
            return Err(format!("pkm.num_keys: {}² slots do not fit in u32 ids", self.sub_keys));
        }
        Ok(())
    }

    /// N = n², the memory slots.
    pub fn num_slots(&self) -> usize {
        self.sub_keys * self.sub_keys
    }
}

pub struct Pkm<T: Float = f32> {
    config: PkmConfig,
    /// `{name}.query`, `{name}.query_bn` (`[heads·key_dim]`) and the sub-keys `{name}.keys1`,
    /// `{name}.keys2` `[n, key_dim/2]`.
    pub router: ProductKeyRouter<T>,
    /// `{name}.values`: `[n², d_model]`, a table read by row.
    pub values: Param<T>,
    /// Which slots the layer selects, once switched on.
    pub usage: UsageTracker,
}

impl<T: Float> Pkm<T> {
    pub fn new(config: &PkmConfig, name: &str, rng: &mut Rng) -> Self {
        let d = config.d_model;
        let spec = ProductKeySpec {
            d_model: d,
            heads: config.heads,
            key_dim: config.key_dim,
            sub_keys: config.sub_keys,
            top_k: config.top_k,
            query_norm: if config.query_batch_norm { QueryNorm::PerHead } else { QueryNorm::Off },
            gate: Gate::Softmax,
        };
        let router = ProductKeyRouter::new(&spec, name, rng);
        let values = Tensor::randn(&[config.num_slots(), d], (d as f64).powf(-0.5), rng);
        Pkm {
            config: config.clone(),
            router,
            values: Param::new(format!("{name}.values"), ParamKind::Table, values),
            usage: UsageTracker::new(config.num_slots()),
        }
    }

    pub fn config(&self) -> &PkmConfig {
        &self.config
    }

    /// `x [tokens, d_model] → [tokens, d_model]`. `training` selects batch statistics (and updates the
    /// running ones) in the query batch norm; evaluation uses the running statistics, so tokens stay
    /// independent.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> FfwOut<T> {
        let (weights, slot_ids) = self.router.forward(tape, x, training); // [tokens, heads·k], [tokens·heads·k]
        self.usage.record(&slot_ids, weights.value().data());
        // Summing the heads = one weighted sum over all heads·k slots of the token.
        let values = tape.param(&self.values);
        FfwOut { y: ops::weighted_gather(tape, &values, &slot_ids, &weights), aux_loss: None }
    }
}

impl<T: Float> Module<T> for Pkm<T> {
    fn batch_norm_stats(&self) -> Vec<(String, &BatchNormStats<T>)> {
        self.router.batch_norm_stats()
    }

    fn batch_norm_stats_mut(&mut self) -> Vec<(String, &mut BatchNormStats<T>)> {
        self.router.batch_norm_stats_mut()
    }

    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.router.params();
        params.push(&self.values);
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.router.params_mut();
        params.push(&mut self.values);
        params
    }
}
