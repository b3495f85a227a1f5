//! Product-key retrieval, the router shared by PKM ([`crate::nn::Pkm`]) and PEER ([`crate::nn::Peer`]):
//! which n² keys each token reads, and with what weights.
//!
//! For each of h heads (Lample et al. 2019, §3.1–3.2; He 2024, §2 and eqs. 1–2):
//!
//! 1. query: `q(x) = W_q x`, one key_dim-wide query per head from a single linear map `d → h·key_dim`,
//!    batch-normalised (Lample et al. §3.2: it keeps the key usage spread);
//! 2. retrieval: the k keys scoring highest against the query. The keys are the n² concatenations
//!    `k_(i,j) = [c_i ; c'_j]` of two sub-key tables C, C' `[n, key_dim/2]` shared by the heads, so
//!    `q·k_(i,j) = q₁·c_i + q₂·c'_j` and the top k are among the k×k pairs of the top k of each half
//!    ([`ops::product_key_topk`]): O(n + k²) work, not O(n²);
//! 3. gates: the k scores through a softmax (or a sigmoid, for PEER's variant), see [`Gate`].
//!
//! The layers differ in what the ids select (PKM: value vectors; PEER: single-neuron experts) and in how
//! the query batch norm sees the heads ([`QueryNorm`]).
//!
//! Initialisation: query weights N(0, 1/d) so that with a layer-normed input each query entry has unit
//! variance; sub-keys uniform in ±1/√(key_dim/2) as in the PKM reference code; batch-norm gain 1, bias 0.

use crate::kernels::Float;
use crate::nn::{Linear, Module};
use crate::ops::{self, BatchNormStats};
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// Epsilon of the query batch norm (PyTorch's default).
const BATCH_NORM_EPS: f64 = 1e-5;
/// Weight of each training batch in the running statistics used for evaluation (PyTorch's default).
const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// How the k retrieved scores of a head become gates, s in eq. 2 of He 2024.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(rename_all = "snake_case"))]
pub enum Gate {
    /// Softmax over the head's k scores (the paper's choice): the gates of a head sum to 1.
    Softmax,
    /// Each score through a sigmoid, independently.
    Sigmoid,
}

/// Whether the queries are batch-normalised, and over which channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryNorm {
    Off,
    /// Statistics, gain and bias for each of the h·key_dim query channels (PKM, as Lample et al.).
    PerHead,
    /// Statistics, gain and bias for key_dim channels, pooled over the heads (PEER).
    SharedByHeads,
}

/// What [`ProductKeyRouter::new`] takes from a PKM or PEER config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProductKeySpec {
    pub d_model: usize,
    /// h, the query heads; they share the sub-keys.
    pub heads: usize,
    /// Query width per head; even, split in two halves of key_dim/2.
    pub key_dim: usize,
    /// n, the sub-keys per half: n² keys.
    pub sub_keys: usize,
    /// k, the keys retrieved per head (at most n).
    pub top_k: usize,
    pub query_norm: QueryNorm,
    pub gate: Gate,
}

pub struct ProductKeyRouter<T: Float = f32> {
    spec: ProductKeySpec,
    /// `{name}.query`: d_model → heads·key_dim, no bias.
    pub query: Linear<T>,
    /// `{name}.query_bn.gain` / `.bias` and running statistics, unless the norm is off.
    query_bn: Option<QueryBatchNorm<T>>,
    /// `{name}.keys1`, `{name}.keys2`: the sub-keys C, C' `[n, key_dim/2]`.
    pub keys1: Param<T>,
    pub keys2: Param<T>,
}

impl<T: Float> ProductKeyRouter<T> {
    /// Parameters named after the layer, `name`: `{name}.query.weight`, `{name}.query_bn.gain`, ...
    pub fn new(spec: &ProductKeySpec, name: &str, rng: &mut Rng) -> Self {
        let (d, half) = (spec.d_model, spec.key_dim / 2);
        let query =
            Linear::new(&format!("{name}.query"), d, spec.heads * spec.key_dim, false, (d as f64).powf(-0.5), rng);
        let norm_width = match spec.query_norm {
            QueryNorm::Off => None,
            QueryNorm::PerHead => Some(spec.heads * spec.key_dim),
            QueryNorm::SharedByHeads => Some(spec.key_dim),
        };
        let query_bn = norm_width.map(|width| QueryBatchNorm::new(&format!("{name}.query_bn"), width));
        let key_bound = (half as f64).powf(-0.5);
        let mut keys = |which: &str| {
            let table = Tensor::uniform(&[spec.sub_keys, half], -key_bound, key_bound, rng);
            Param::new(format!("{name}.{which}"), ParamKind::NoDecay, table)
        };
        let (keys1, keys2) = (keys("keys1"), keys("keys2"));
        ProductKeyRouter { spec: *spec, query, query_bn, keys1, keys2 }
    }

    /// `x [tokens, d_model]` → the gates `[tokens, heads·k]` and the ids `[tokens·heads·k]` of the keys they
    /// weight, both ordered by token, then head, then rank. `training` selects batch statistics (and
    /// updates the running ones) in the query batch norm; evaluation uses the running statistics, so tokens
    /// stay independent.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> (Var<T>, Vec<u32>) {
        let (tokens, heads, k) = (x.shape()[0], self.spec.heads, self.spec.top_k);
        // 1. Query network, one key_dim-wide query per head, normalised.
        let mut query = self.query.forward(tape, x); // [tokens, heads·key_dim]
        if let Some(norm) = &mut self.query_bn {
            query = norm.forward(tape, &query, training);
        }
        let query = ops::reshape(tape, &query, &[tokens * heads, self.spec.key_dim]);
        // 2. Product-key retrieval of each head's top-k keys: scores and ids `[tokens·heads, k]`.
        let (keys1, keys2) = (tape.param(&self.keys1), tape.param(&self.keys2));
        let (scores, ids) = ops::product_key_topk(tape, &query, &keys1, &keys2, k);
        // 3. Gates over each head's k keys.
        let gates = match self.spec.gate {
            Gate::Softmax => ops::softmax(tape, &scores),
            Gate::Sigmoid => ops::sigmoid(tape, &scores),
        };
        (ops::reshape(tape, &gates, &[tokens, heads * k]), ids)
    }
}

impl<T: Float> Module<T> for ProductKeyRouter<T> {
    fn batch_norm_stats(&self) -> Vec<(String, &BatchNormStats<T>)> {
        self.query_bn.iter().map(|norm| (norm.name.clone(), &norm.stats)).collect()
    }

    fn batch_norm_stats_mut(&mut self) -> Vec<(String, &mut BatchNormStats<T>)> {
        self.query_bn.iter_mut().map(|norm| (norm.name.clone(), &mut norm.stats)).collect()
    }

    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.query.params();
        params.extend(self.query_bn.iter().flat_map(|norm| [&norm.gain, &norm.bias]));
        params.extend([&self.keys1, &self.keys2]);
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.query.params_mut();
        params.extend(self.query_bn.iter_mut().flat_map(|norm| [&mut norm.gain, &mut norm.bias]));
        params.extend([&mut self.keys1, &mut self.keys2]);
        params
    }
}

/// The query batch norm over `width` channels: the query's elements are normalised as rows of `width`.
struct QueryBatchNorm<T: Float> {
    /// `{name}`: checkpoints keep the running statistics under it.
    name: String,
    /// `{name}.gain`, ones, and `{name}.bias`, zeros, `[width]`.
    gain: Param<T>,
    bias: Param<T>,
    stats: BatchNormStats<T>,
}

impl<T: Float> QueryBatchNorm<T> {
    fn new(name: &str, width: usize) -> Self {
        QueryBatchNorm {
            name: name.to_string(),
            gain: Param::new(format!("{name}.gain"), ParamKind::NoDecay, Tensor::full(&[width], T::ONE)),
            bias: Param::new(format!("{name}.bias"), ParamKind::NoDecay, Tensor::zeros(&[width])),
            stats: BatchNormStats::new(width, BATCH_NORM_MOMENTUM),
        }
    }

    /// `query` normalised, shaped `[elements / width, width]`.
    fn forward(&mut self, tape: &mut Tape<T>, query: &Var<T>, training: bool) -> Var<T> {
        let width = self.stats.mean.len();
        let rows = query.value().numel() / width;
        let query = ops::reshape(tape, query, &[rows, width]);
        let (gain, bias) = (tape.param(&self.gain), tape.param(&self.bias));
        ops::batch_norm(tape, &query, &gain, &bias, &mut self.stats, training, BATCH_NORM_EPS)
    }
}
