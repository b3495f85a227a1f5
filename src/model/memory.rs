//! How much memory a model needs, from its config alone, so that a config (or a checkpoint) asking for
//! more than the machine has is refused before anything is allocated.
//!
//! Parameters are counted exactly, layer by layer, as the constructors in `nn/` create them. Training
//! adds AdamW's two moments per parameter, a gradient per dense parameter, and the activations the tape
//! keeps for the backward pass. Activations are an estimate (each op's saved tensors, counted per token):
//! the output head's logits and their softmax, attention's score and probability matrices, a dozen
//! `d_model`-wide tensors per block and the feed-forward layer's hidden units. It is meant to be within a
//! factor of two of the measured peak: enough to tell 300 MB from 30 GB.
//!
//! Counts are f64: a hostile config can ask for more than 2^64 of anything, and f64 is exact below 2^53,
//! far past any model this machine holds.

use crate::model::config::{FfwKind, ModelConfig, Positions};

/// Bytes of one f32.
const F32: f64 = 4.0;

/// Activations of the forward pass are kept for the backward pass, which makes gradients of the same
/// size as it goes: budget both.
const BACKWARD_FACTOR: f64 = 2.0;

/// The memory a model needs, split by what holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// The model's parameter count.
    pub params: f64,
    /// Bytes of the parameters.
    pub param_bytes: f64,
    /// Bytes of optimizer moments and gradients (0 when not training).
    pub optimizer_bytes: f64,
    /// Bytes of activations for one batch.
    pub activation_bytes: f64,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> f64 {
        self.param_bytes + self.optimizer_bytes + self.activation_bytes
    }
}

/// The parameters `Gpt::new` creates for `config` (which must be valid).
pub fn param_count(config: &ModelConfig) -> f64 {
    let (d, vocab) = (config.d_model as f64, config.vocab_size as f64);
    let positions = if config.positions == Positions::Learned { config.seq_len as f64 * d } else { 0.0 };
    let head = if config.tie_embeddings { 0.0 } else { d * vocab };
    let layer_norms = 2.0 * (2.0 * d);
    let attention = linear(d, 3.0 * d, true) + linear(d, d, true);
    let blocks: f64 = (0..config.n_layers).map(|b| layer_norms + attention + ffw_params(config, b)).sum();
    vocab * d + positions + blocks + 2.0 * d + head
}

/// Weights plus bias of a `d_in → d_out` linear layer.
fn linear(d_in: f64, d_out: f64, bias: bool) -> f64 {
    d_in * d_out + if bias { d_out } else { 0.0 }
}

/// Parameters of block `block`'s feed-forward layer.
fn ffw_params(config: &ModelConfig, block: usize) -> f64 {
    let d = config.d_model as f64;
    match config.ffw_of(block) {
        FfwKind::Dense => {
            let d_ff = config.dense.d_ff as f64;
            linear(d, d_ff, true) + linear(d_ff, d, true)
        }
        FfwKind::Moe => {
            let (experts, d_expert) = (config.moe.num_experts as f64, config.moe.d_expert as f64);
            linear(d, experts, false) + experts * (linear(d, d_expert, true) + linear(d_expert, d, true))
        }
        FfwKind::Pkm => {
            let p = &config.pkm;
            let norm_width = if p.keys.query_batch_norm { p.keys.heads as f64 * p.keys.key_dim as f64 } else { 0.0 };
            router_params(d, p.keys.heads, p.keys.key_dim, p.sub_keys, norm_width)
                + p.sub_keys as f64 * p.sub_keys as f64 * d
        }
        FfwKind::Peer => {
            let p = &config.peer;
            let norm_width = if p.keys.query_batch_norm { p.keys.key_dim as f64 } else { 0.0 };
            router_params(d, p.keys.heads, p.keys.key_dim, p.sub_keys(), norm_width) + 2.0 * p.num_experts as f64 * d
        }
    }
}

/// Query projection, its batch norm's gain and bias, and the two sub-key tables of a product-key router.
fn router_params(d: f64, heads: usize, key_dim: usize, sub_keys: usize, norm_width: f64) -> f64 {
    linear(d, heads as f64 * key_dim as f64, false) + 2.0 * norm_width + 2.0 * sub_keys as f64 * (key_dim / 2) as f64
}

/// Floats the forward pass keeps per token, over the whole model, at context `seq_len`.
fn activations_per_token(config: &ModelConfig) -> f64 {
    let d = config.d_model as f64;
    let attention = 2.0 * config.n_heads as f64 * config.seq_len as f64 + 12.0 * d;
    let ffw: f64 = (0..config.n_layers)
        .map(|block| match config.ffw_of(block) {
            FfwKind::Dense => 2.0 * config.dense.d_ff as f64,
            FfwKind::Moe => {
                let m = &config.moe;
                2.0 * m.num_experts as f64 + m.top_k as f64 * (2.0 * m.d_expert as f64 + d)
            }
            FfwKind::Pkm => {
                let p = &config.pkm;
                2.0 * p.keys.heads as f64 * (p.keys.key_dim as f64 + p.sub_keys as f64 + p.keys.top_k as f64) + 2.0 * d
            }
            FfwKind::Peer => {
                let p = &config.peer;
                2.0 * p.keys.heads as f64 * (p.keys.key_dim as f64 + p.sub_keys() as f64 + 2.0 * p.keys.top_k as f64)
                    + 2.0 * d
            }
        })
        .sum();
    config.n_layers as f64 * attention + ffw + 3.0 * config.vocab_size as f64
}

/// Memory to train `config` on batches of `batch_size` sequences: parameters, AdamW moments and
/// gradients, and the activations of one step.
pub fn training(config: &ModelConfig, batch_size: usize) -> MemoryEstimate {
    let forward = inference(config, batch_size);
    MemoryEstimate {
        // Two moments and (at most) one gradient per parameter.
        optimizer_bytes: forward.params * 3.0 * F32,
        activation_bytes: forward.activation_bytes * BACKWARD_FACTOR,
        ..forward
    }
}

/// Memory to run `config` forward only (evaluation, sampling) on batches of `batch_size` sequences.
pub fn inference(config: &ModelConfig, batch_size: usize) -> MemoryEstimate {
    let params = param_count(config);
    let tokens = batch_size as f64 * config.seq_len as f64;
    MemoryEstimate {
        params,
        param_bytes: params * F32,
        optimizer_bytes: 0.0,
        activation_bytes: tokens * activations_per_token(config) * F32,
    }
}
