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

use crate::error::Error;
use crate::kernels::Float;
use crate::nn::ffw::positive;
use crate::nn::product_key_router::{Gate, ProductKeyConfig, ProductKeyRouter, QueryNorm};
use crate::nn::{FfwOut, Module, UsageTracker};
use crate::ops::{self, BatchNormStats};
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

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
        let d = config.keys.d_model;
        let router = ProductKeyRouter::new(&config.keys, config.sub_keys, QueryNorm::PerHead, Gate::Softmax, name, rng);
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

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct PkmConfig {
    /// Query heads, top k, key width and query batch norm (per head), written inline in config files.
    #[cfg_attr(feature = "io", serde(flatten))]
    pub keys: ProductKeyConfig,
    /// n, the sub-keys per half; the memory has N = n² slots. Written `num_keys` in config files.
    #[cfg_attr(feature = "io", serde(rename = "num_keys"))]
    pub sub_keys: usize,
}

impl PkmConfig {
    pub fn validate(&self) -> Result<(), Error> {
        positive("pkm.num_keys", self.sub_keys)?;
        self.keys.validate("pkm", self.sub_keys, "num_keys")?;
        if self.sub_keys.checked_mul(self.sub_keys).is_none_or(|n| n > u32::MAX as usize) {
            return Err(Error::Invalid(format!("pkm.num_keys: {}² slots do not fit in u32 ids", self.sub_keys)));
        }
        Ok(())
    }

    /// N = n², the memory slots.
    pub fn num_slots(&self) -> usize {
        self.sub_keys * self.sub_keys
    }
}
