//! Causal multi-head self-attention (Vaswani et al. 2017, as in GPT-2), with a key/value cache.
//!
//! One linear map makes queries, keys and values for all heads at once (`[tokens, 3·d]`), the fused
//! [`crate::ops::causal_self_attention`] op mixes them head by head straight from that tensor, and a
//! second linear map projects back.
//! With rotary positions, or with a cache, the three are split first and [`crate::ops::causal_attention`]
//! takes them apart: queries and keys are turned by [`crate::ops::rotary`] before they meet, each at its
//! absolute position (cached keys were turned when they were new).
//! While sampling, [`KvCache`] keeps the keys and values of the tokens already seen, so each new token
//! costs one row of queries against the cache: O(context), not a recomputation of the whole prefix.

use crate::kernels::Float;
use crate::nn::linear::Linear;
use crate::nn::Module;
use crate::ops;
use crate::param::Param;
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

pub struct Attention<T: Float = f32> {
    qkv: Linear<T>,
    proj: Linear<T>,
    n_heads: usize,
    /// Whether queries and keys get rotary position embeddings.
    rotary: bool,
}

/// Keys and values of the positions processed so far, `[1, positions, d]` each (batch of one).
#[derive(Clone, Default)]
pub struct KvCache<T: Float = f32> {
    keys: Option<Tensor<T>>,
    values: Option<Tensor<T>>,
}

impl<T: Float> KvCache<T> {
    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dim(1))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Float> Attention<T> {
    /// GPT-2 initialisation: N(0, 0.02²) weights, zero biases; the output projection, which adds into
    /// the residual stream, is scaled down by 1/√(2·n_layers) so the stream's variance does not grow
    /// with depth.
    /// With `rotary`, queries and keys get rotary position embeddings (the head width must be even).
    pub fn new(name: &str, d_model: usize, n_heads: usize, n_layers: usize, rotary: bool, rng: &mut Rng) -> Self {
        let residual_std = 0.02 / (2.0 * n_layers as f64).sqrt();
        Attention {
            qkv: Linear::new(&format!("{name}.qkv"), d_model, 3 * d_model, true, 0.02, rng),
            proj: Linear::new(&format!("{name}.proj"), d_model, d_model, true, residual_std, rng),
            n_heads,
            rotary,
        }
    }

    /// Self-attention over `x` of shape `[batch, seq, d]`, each position seeing itself and the past.
    pub fn forward(&self, tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
        let mixed = if self.rotary {
            let (q, k, v) = self.project_qkv(tape, x, 0);
            ops::causal_attention(tape, &q, &k, &v, self.n_heads)
        } else {
            // Queries, keys and values stay side by side in the projection's output: no split, no copies.
            let qkv = self.qkv.forward(tape, x);
            ops::causal_self_attention(tape, &qkv, self.n_heads)
        };
        self.proj.forward(tape, &mixed)
    }

    /// Attention for new positions `x` (`[1, new, d]`) that also sees the cached past; appends the new
    /// keys and values to `cache`. Inference only: the cache holds plain tensors, outside the tape.
    pub fn forward_cached(&self, tape: &mut Tape<T>, x: &Var<T>, cache: &mut KvCache<T>) -> Var<T> {
        let (q, k_new, v_new) = self.project_qkv(tape, x, cache.len());
        let keys = append_positions(cache.keys.take(), k_new.value());
        let values = append_positions(cache.values.take(), v_new.value());
        let (k_all, v_all) = (tape.constant(keys.clone()), tape.constant(values.clone()));
        cache.keys = Some(keys);
        cache.values = Some(values);
        let mixed = ops::causal_attention(tape, &q, &k_all, &v_all, self.n_heads);
        self.proj.forward(tape, &mixed)
    }

    /// Queries, keys and values of `x`, whose first row sits at `first_position`.
    fn project_qkv(&self, tape: &mut Tape<T>, x: &Var<T>, first_position: usize) -> (Var<T>, Var<T>, Var<T>) {
        let d = x.value().last_dim();
        let qkv = self.qkv.forward(tape, x);
        let mut parts = ops::split(tape, &qkv, 2, &[d, d, d]).into_iter();
        let (q, k, v) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if !self.rotary {
            return (q, k, v);
        }
        let q = ops::rotary(tape, &q, self.n_heads, first_position);
        let k = ops::rotary(tape, &k, self.n_heads, first_position);
        (q, k, v)
    }
}

/// `[1, a, d]` followed by `[1, b, d]` along the position axis.
fn append_positions<T: Float>(past: Option<Tensor<T>>, new: &Tensor<T>) -> Tensor<T> {
    let Some(past) = past else { return new.clone() };
    let d = new.last_dim();
    let mut data = past.into_vec();
    data.extend_from_slice(new.data());
    let positions = data.len() / d;
    Tensor::from_vec(&[1, positions, d], data)
}

impl<T: Float> Module<T> for Attention<T> {
    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.qkv.params();
        params.extend(self.proj.params());
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.qkv.params_mut();
        params.extend(self.proj.params_mut());
        params
    }
}
