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

use crate::error::Error;
use crate::kernels::Float;
use crate::nn::ffw::positive;
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

/// The product-key part of a PKM or PEER config: the query heads, how many keys each retrieves, the
/// query width and its batch norm. Each layer's config holds one beside its own fields (the size of its
/// table and what the ids select); config files write its fields inline, `"heads"` beside `"num_experts"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
pub struct ProductKeyConfig {
    /// Width of the residual stream; a config file may leave it out (the model's `d_model` is used).
    #[cfg_attr(feature = "io", serde(default))]
    pub d_model: usize,
    /// h, the query heads; they share the sub-keys.
    pub heads: usize,
    /// k, the keys retrieved per head (at most n, the sub-keys per half).
    pub top_k: usize,
    /// Query width per head; even, split in two halves of key_dim/2.
    pub key_dim: usize,
    /// Batch-normalise the queries (Lample et al. §3.2: it keeps the key usage spread). Default true.
    #[cfg_attr(feature = "io", serde(default = "default_true"))]
    pub query_batch_norm: bool,
}

#[cfg(feature = "io")]
fn default_true() -> bool {
    true
}

impl ProductKeyConfig {
    /// Checks the fields against n = `sub_keys`; messages start with `{layer}.{field}:` and call n
    /// `sub_keys_name`, as the layer's config file writes it.
    pub(crate) fn validate(&self, layer: &str, sub_keys: usize, sub_keys_name: &str) -> Result<(), Error> {
        positive(&format!("{layer}.d_model"), self.d_model)?;
        positive(&format!("{layer}.heads"), self.heads)?;
        positive(&format!("{layer}.top_k"), self.top_k)?;
        positive(&format!("{layer}.key_dim"), self.key_dim)?;
        if self.key_dim % 2 != 0 {
            return Err(Error::Invalid(format!(
                "{layer}.key_dim: {} is odd; the query is split in two halves",
                self.key_dim
            )));
        }
        if self.top_k > sub_keys {
            return Err(Error::Invalid(format!("{layer}.top_k: {} exceeds {sub_keys_name} ({sub_keys})", self.top_k)));
        }
        Ok(())
    }
}

/// Over which channels the query batch norm (when `query_batch_norm` is on) keeps its statistics, gain and
/// bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryNorm {
    /// For each of the h·key_dim query channels (PKM, as Lample et al.).
    PerHead,
    /// For key_dim channels, pooled over the heads (PEER).
    SharedByHeads,
}

pub struct ProductKeyRouter<T: Float = f32> {
    keys: ProductKeyConfig,
    gate: Gate,
    /// `{name}.query`: d_model → heads·key_dim, no bias.
    pub query: Linear<T>,
    /// `{name}.query_bn.gain` / `.bias` and running statistics, unless the norm is off.
    query_bn: Option<QueryBatchNorm<T>>,
    /// `{name}.keys1`, `{name}.keys2`: the sub-keys C, C' `[n, key_dim/2]`.
    pub keys1: Param<T>,
    pub keys2: Param<T>,
}

impl<T: Float> ProductKeyRouter<T> {
    /// A router over n = `sub_keys` sub-keys per half (n² keys), its query batch norm (if `keys` asks for
    /// one) over the channels `query_norm` says, and `gate` making each head's scores its gates. Parameters
    /// are named after the layer, `name`: `{name}.query.weight`, `{name}.query_bn.gain`, ...
    pub fn new(
        keys: &ProductKeyConfig,
        sub_keys: usize,
        query_norm: QueryNorm,
        gate: Gate,
        name: &str,
        rng: &mut Rng,
    ) -> Self {
        let (d, half) = (keys.d_model, keys.key_dim / 2);
        let query =
            Linear::new(&format!("{name}.query"), d, keys.heads * keys.key_dim, false, (d as f64).powf(-0.5), rng);
        let norm_width = keys.query_batch_norm.then_some(match query_norm {
            QueryNorm::PerHead => keys.heads * keys.key_dim,
            QueryNorm::SharedByHeads => keys.key_dim,
        });
        let query_bn = norm_width.map(|width| QueryBatchNorm::new(&format!("{name}.query_bn"), width));
        let key_bound = (half as f64).powf(-0.5);
        let mut sub_key_table = |which: &str| {
            let table = Tensor::uniform(&[sub_keys, half], -key_bound, key_bound, rng);
            Param::new(format!("{name}.{which}"), ParamKind::NoDecay, table)
        };
        let (keys1, keys2) = (sub_key_table("keys1"), sub_key_table("keys2"));
        ProductKeyRouter { keys: *keys, gate, query, query_bn, keys1, keys2 }
    }

    /// `x [tokens, d_model]` → the gates `[tokens, heads·k]` and the ids `[tokens·heads·k]` of the keys they
    /// weight, both ordered by token, then head, then rank. `training` selects batch statistics (and
    /// updates the running ones) in the query batch norm; evaluation uses the running statistics, so tokens
    /// stay independent.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> (Var<T>, Vec<u32>) {
        let (tokens, heads, k) = (x.shape()[0], self.keys.heads, self.keys.top_k);
        // 1. Query network, one key_dim-wide query per head, normalised.
        let mut query = self.query.forward(tape, x); // [tokens, heads·key_dim]
        if let Some(norm) = &mut self.query_bn {
            query = norm.forward(tape, &query, training);
        }
        let query = ops::reshape(tape, &query, &[tokens * heads, self.keys.key_dim]);
        // 2. Product-key retrieval of each head's top-k keys: scores and ids `[tokens·heads, k]`.
        let (keys1, keys2) = (tape.param(&self.keys1), tape.param(&self.keys2));
        let (scores, ids) = ops::product_key_topk(tape, &query, &keys1, &keys2, k);
        // 3. Gates over each head's k keys.
        let gates = match self.gate {
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
