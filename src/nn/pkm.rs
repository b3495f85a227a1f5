//! Product-key memory (Lample et al. 2019, "Large Memory Layers with Product Keys"): a table of N = n²
//! value vectors, of which each token reads a softmax-weighted handful.
//!
//! Per head h the token's query `q_h(x)` (a linear map, batch-normalised as in §3.2 of that paper) is split
//! into two halves; each half is scored against its own table of n sub-keys, and the top-k of the k×k
//! candidate sums is found without scoring all n² full keys ([`ops::product_key_topk`], §3.1). The k scores
//! go through a softmax and weight the k selected rows of the value table; head outputs are summed (§3.2,
//! multi-head memory). PEER ([`crate::nn::Peer`]) replaces these value vectors by single-neuron experts.
//!
//! Simplification: the sub-key tables are shared by all heads (as in PEER); Lample et al. give each head
//! its own keys. The heads still differ through their queries.
//!
//! Initialisation: query weights N(0, 1/d_model); sub-keys uniform in ±1/√(key_dim/2) (the reference
//! code's choice); values N(0, 1/d_model) (as in that code); batch-norm gain 1, bias 0.

use crate::kernels::Float;
use crate::nn::bn_name;
use crate::nn::ffw::positive;
use crate::nn::{ExpertUsage, FfwOut, Linear, Module};
use crate::ops::{self, BatchNormStats};
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// Epsilon of the query batch norm (PyTorch's default).
pub const BATCH_NORM_EPS: f64 = 1e-5;
/// Weight of each training batch in the running statistics used for evaluation (PyTorch's default).
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct PkmConfig {
    pub d_model: usize,
    /// n, the sub-keys per half; the memory has N = n² slots.
    pub num_keys: usize,
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
        positive("pkm.num_keys", self.num_keys)?;
        positive("pkm.heads", self.heads)?;
        positive("pkm.top_k", self.top_k)?;
        positive("pkm.key_dim", self.key_dim)?;
        if self.key_dim % 2 != 0 {
            return Err(format!("pkm.key_dim: {} is odd; the query is split in two halves", self.key_dim));
        }
        if self.top_k > self.num_keys {
            return Err(format!("pkm.top_k: {} exceeds num_keys ({})", self.top_k, self.num_keys));
        }
        if self.num_keys.checked_mul(self.num_keys).is_none_or(|n| n > u32::MAX as usize) {
            return Err(format!("pkm.num_keys: {}² slots do not fit in u32 ids", self.num_keys));
        }
        Ok(())
    }

    /// N = n², the memory slots.
    pub fn num_slots(&self) -> usize {
        self.num_keys * self.num_keys
    }

    /// Query `2·d·heads·key_dim`; sub-key scores `2·heads·n·key_dim` (two halves of n·key_dim/2 each);
    /// weighted sum of the selected values `2·heads·k·d`. The k² candidate sums, top-k comparisons and the
    /// softmax are O(heads·k²) and left out.
    pub fn flops_per_token(&self) -> f64 {
        let (d, h, k) = (self.d_model as f64, self.heads as f64, self.top_k as f64);
        let (n, kd) = (self.num_keys as f64, self.key_dim as f64);
        2.0 * d * h * kd + 2.0 * h * n * kd + 2.0 * h * k * d
    }
}

pub struct Pkm<T: Float = f32> {
    config: PkmConfig,
    /// `{name}.query`: d_model → heads·key_dim, no bias.
    pub query: Linear<T>,
    /// `{name}.query_bn.gain` / `.bias`, `[heads·key_dim]`, when `query_batch_norm`.
    pub query_bn: Option<(Param<T>, Param<T>)>,
    query_bn_stats: BatchNormStats<T>,
    /// `{name}.keys1`, `{name}.keys2`: `[n, key_dim/2]`.
    pub keys1: Param<T>,
    pub keys2: Param<T>,
    /// `{name}.values`: `[n², d_model]`, a table read by row.
    pub values: Param<T>,
    usage: Option<ExpertUsage>,
}

impl<T: Float> Pkm<T> {
    pub fn new(config: &PkmConfig, name: &str, rng: &mut Rng) -> Self {
        let (d, half) = (config.d_model, config.key_dim / 2);
        let query_width = config.heads * config.key_dim;
        let query = Linear::new(&format!("{name}.query"), d, query_width, false, (d as f64).powf(-0.5), rng);
        let query_bn = config.query_batch_norm.then(|| batch_norm_params(&format!("{name}.query_bn"), query_width));
        let key_bound = (half as f64).powf(-0.5);
        let mut keys = |which: &str| {
            let table = Tensor::uniform(&[config.num_keys, half], -key_bound, key_bound, rng);
            Param::new(format!("{name}.{which}"), ParamKind::NoDecay, table)
        };
        let (keys1, keys2) = (keys("keys1"), keys("keys2"));
        let values = Tensor::randn(&[config.num_slots(), d], (d as f64).powf(-0.5), rng);
        Pkm {
            config: config.clone(),
            query,
            query_bn,
            query_bn_stats: BatchNormStats::new(query_width, BATCH_NORM_MOMENTUM),
            keys1,
            keys2,
            values: Param::new(format!("{name}.values"), ParamKind::Table, values),
            usage: None,
        }
    }

    pub fn config(&self) -> &PkmConfig {
        &self.config
    }

    /// `x [tokens, d_model] → [tokens, d_model]`. `training` selects batch statistics (and updates the
    /// running ones) in the query batch norm; evaluation uses the running statistics, so tokens stay
    /// independent.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> FfwOut<T> {
        let (tokens, heads, k) = (x.shape()[0], self.config.heads, self.config.top_k);
        let mut query = self.query.forward(tape, x); // [tokens, heads·key_dim]
        if let Some((gain, bias)) = &self.query_bn {
            let (gain, bias) = (tape.param(gain), tape.param(bias));
            query = ops::batch_norm(tape, &query, &gain, &bias, &mut self.query_bn_stats, training, BATCH_NORM_EPS);
        }
        let query = ops::reshape(tape, &query, &[tokens * heads, self.config.key_dim]);
        let (keys1, keys2) = (tape.param(&self.keys1), tape.param(&self.keys2));
        let (scores, slot_ids) = ops::product_key_topk(tape, &query, &keys1, &keys2, k); // [tokens·heads, k]
        if let Some(usage) = &mut self.usage {
            usage.record(&slot_ids);
        }
        let weights = ops::softmax(tape, &scores);
        // Summing the heads = one weighted sum over all heads·k slots of the token.
        let weights = ops::reshape(tape, &weights, &[tokens, heads * k]);
        let values = tape.param(&self.values);
        FfwOut { y: ops::weighted_gather(tape, &values, &slot_ids, &weights), aux_loss: None }
    }

    /// Starts (with zero counts) or stops counting slot selections; turning it on again keeps the counts.
    pub fn track_usage(&mut self, on: bool) {
        ExpertUsage::switch(&mut self.usage, on, self.config.num_slots());
    }

    pub fn usage(&self) -> Option<&ExpertUsage> {
        self.usage.as_ref()
    }

    pub fn reset_usage(&mut self) {
        if let Some(usage) = &mut self.usage {
            usage.reset();
        }
    }
}

/// Gain (ones) and bias (zeros) of a batch norm over `width` channels, named `{name}.gain` / `.bias`.
pub(crate) fn batch_norm_params<T: Float>(name: &str, width: usize) -> (Param<T>, Param<T>) {
    (
        Param::new(format!("{name}.gain"), ParamKind::NoDecay, Tensor::full(&[width], T::ONE)),
        Param::new(format!("{name}.bias"), ParamKind::NoDecay, Tensor::zeros(&[width])),
    )
}

impl<T: Float> Module<T> for Pkm<T> {
    fn batch_norm_stats(&self) -> Vec<(String, &BatchNormStats<T>)> {
        self.query_bn.iter().map(|(gain, _)| (bn_name(gain), &self.query_bn_stats)).collect()
    }

    fn batch_norm_stats_mut(&mut self) -> Vec<(String, &mut BatchNormStats<T>)> {
        match &self.query_bn {
            Some((gain, _)) => vec![(bn_name(gain), &mut self.query_bn_stats)],
            None => Vec::new(),
        }
    }

    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.query.params();
        if let Some((gain, bias)) = &self.query_bn {
            params.extend([gain, bias]);
        }
        params.extend([&self.keys1, &self.keys2, &self.values]);
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.query.params_mut();
        if let Some((gain, bias)) = &mut self.query_bn {
            params.extend([gain, bias]);
        }
        params.extend([&mut self.keys1, &mut self.keys2, &mut self.values]);
        params
    }
}
