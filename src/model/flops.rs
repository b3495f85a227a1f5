//! Training FLOPs per token of a model config, so runs of different layers can be matched on compute
//! (the paper's isoFLOP comparison, He 2024 §3.1).
//!
//! Counting follows Kaplan et al. (2020) and Hoffmann et al. (2022): a multiply-add is 2 FLOPs; a
//! forward pass costs 2 FLOPs per weight it multiplies by, plus attention's scores and mixing,
//! 2·2·seq_len·d per layer (counted over the full context, as those papers do); a training step is three
//! forward passes' worth (the backward pass costs about twice the forward). Norms, softmaxes, activation
//! functions, top-k selections, rotary position turns and embedding lookups are left out: each is O(d) per
//! token against the O(d²) of the matrix products. A feed-forward layer reports its own forward cost
//! (router, queries, key scoring and expert compute for the retrieval layers) through `flops_per_token`.

use crate::model::config::{FfwKind, ModelConfig};

/// Forward FLOPs per token.
pub fn forward_flops_per_token(config: &ModelConfig) -> f64 {
    let d = config.d_model as f64;
    let attention = 2.0 * (d * 3.0 * d + d * d) + 2.0 * 2.0 * config.seq_len as f64 * d;
    let ffw: f64 = (0..config.n_layers)
        .map(|block| match config.ffw_of(block) {
            FfwKind::Dense => config.dense.flops_per_token(),
            FfwKind::Moe => config.moe.flops_per_token(),
            FfwKind::Pkm => config.pkm.flops_per_token(),
            FfwKind::Peer => config.peer.flops_per_token(),
        })
        .sum();
    let head = 2.0 * d * config.vocab_size as f64;
    config.n_layers as f64 * attention + ffw + head
}

/// Training FLOPs per token: forward plus backward, three forwards' worth.
pub fn train_flops_per_token(config: &ModelConfig) -> f64 {
    3.0 * forward_flops_per_token(config)
}

/// Most steps a budget may buy: beyond 2^53 a step count is no longer exact in an f64.
const MAX_STEPS: f64 = (1u64 << 53) as f64;

/// Steps a run of `budget` training FLOPs takes at `tokens_per_step`, rounded to the nearest whole step.
/// Errors if the budget is not a positive number, buys less than one step, or more than 2^53.
pub fn steps_for_budget(config: &ModelConfig, budget: f64, tokens_per_step: usize) -> Result<u64, String> {
    if !(budget.is_finite() && budget > 0.0) {
        return Err(format!("--flops {budget}: the budget must be a positive number of FLOPs"));
    }
    let per_step = train_flops_per_token(config) * tokens_per_step as f64;
    let steps = (budget / per_step).round();
    if steps < 1.0 {
        return Err(format!("--flops {budget:e} buys no whole step: one step costs {per_step:.3e} FLOPs"));
    }
    if steps > MAX_STEPS {
        return Err(format!("--flops {budget:e} buys {steps:.3e} steps of {per_step:.3e} FLOPs, more than 2^53"));
    }
    Ok(steps as u64)
}
