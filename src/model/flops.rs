//! Training FLOPs per token of a model config, so runs of different layers can be matched on compute
//! (the paper's isoFLOP comparison, He 2024 §3.1).
//!
//! **Convention: count what a training step executes.** A multiply-add is 2 FLOPs, a lone add or
//! multiply 1. Counted are the matrix products (every linear map, attention's scores and mixing, the
//! output head), the product-key sub-key scores and the candidate sums, and the per-slot dot products and
//! axpys of the sparse layers (PEER's experts, PKM's values, MoE's gated scatter). Left out is the
//! elementwise work, O(d) per token against the O(d²) above: norms, softmaxes, activation functions,
//! residual adds, top-k comparisons, rotary turns, the optimizer. The input embedding is a lookup and its
//! gradient a scatter of rows, so it costs nothing here (Chinchilla, Hoffmann et al. 2022 App. F, charges
//! it `2·V·d` as a product with a one-hot vector; nothing of the kind runs).
//!
//! The backward is counted op by op, not as "twice the forward": a linear map's backward is two products
//! of its forward's size (`dx` and `dW`), but product-key retrieval scores all √N sub-keys forward while
//! its backward touches only the k selected pairs per head.
//!
//! Attention is counted over the full context, `4·n_ctx·d` per token and layer forward (`2·n_ctx·d` for the
//! scores and as much for mixing the values), as Chinchilla does and Kaplan et al. (2020, Table 1) do:
//! the one exception to "what a step executes", kept because the isoFLOP study's budgets are set in it.
//! The kernel skips most of the masked half (`ops::attention`, tiles of 32 queries): at a context of 256
//! it runs 56% of these score and mixing products, and `ops::attention::causal_attention_flops` says
//! exactly how many.
//!
//! `tests/flop_count.rs` checks every figure here against the FLOPs the kernels record
//! ([`crate::kernels::flop_count`]) in a real forward and backward.

use crate::error::Error;
use crate::model::config::{FfwKind, ModelConfig};
use crate::nn::ffw::DenseFfwConfig;
use crate::nn::moe::{MoeConfig, Routing};
use crate::nn::peer::PeerConfig;
use crate::nn::pkm::PkmConfig;
use crate::nn::product_key_router::ProductKeyConfig;

/// FLOPs per token of a forward pass and of its backward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenFlops {
    pub forward: f64,
    pub backward: f64,
}

impl TokenFlops {
    /// A product of `fan_in·fan_out` multiply-adds per token: its backward computes the input gradient and
    /// the weight gradient, one product of the same size each.
    fn linear(fan_in: f64, fan_out: f64) -> Self {
        TokenFlops { forward: 2.0 * fan_in * fan_out, backward: 4.0 * fan_in * fan_out }
    }

    /// A training step: forward and backward.
    pub fn train(&self) -> f64 {
        self.forward + self.backward
    }
}

impl std::ops::Add for TokenFlops {
    type Output = TokenFlops;

    fn add(self, other: TokenFlops) -> TokenFlops {
        TokenFlops { forward: self.forward + other.forward, backward: self.backward + other.backward }
    }
}

impl std::iter::Sum for TokenFlops {
    fn sum<I: Iterator<Item = TokenFlops>>(iter: I) -> TokenFlops {
        iter.fold(TokenFlops::default(), |a, b| a + b)
    }
}

/// One attention layer over a context of `n_ctx` tokens: the query/key/value and output maps, then
/// `Q·Kᵀ` and `P·V`, each `n_ctx·d` multiply-adds per token; their backward takes two products each.
pub fn attention(d_model: usize, n_ctx: usize) -> TokenFlops {
    let (d, s) = (d_model as f64, n_ctx as f64);
    TokenFlops::linear(d, 3.0 * d)
        + TokenFlops::linear(d, d)
        + TokenFlops { forward: 4.0 * s * d, backward: 8.0 * s * d }
}

/// The dense GPT-2 MLP: two linear maps through `d_ff` (biases and GELU are elementwise).
pub fn dense(config: &DenseFfwConfig) -> TokenFlops {
    let (d, f) = (config.d_model as f64, config.d_ff as f64);
    TokenFlops::linear(d, f) + TokenFlops::linear(f, d)
}

/// Mixture of experts: the router `d → E`, then per expert slot one expert MLP and the gated add of its
/// output into the token's row (backward: the scaled gradient row, d multiplies, and the gate's dot
/// product). A token fills `top_k` slots with token choice, `capacity_factor·top_k` on average with
/// expert choice (each expert's `⌈capacity_factor·tokens·top_k / E⌉` rounds up a little more).
pub fn moe(config: &MoeConfig) -> TokenFlops {
    let (d, e) = (config.d_model as f64, config.num_experts as f64);
    let slots = match config.routing {
        Routing::TokenChoice => config.top_k as f64,
        Routing::ExpertChoice => config.capacity_factor * config.top_k as f64,
    };
    let expert = dense(&DenseFfwConfig { d_model: config.d_model, d_ff: config.d_expert });
    let scatter = TokenFlops { forward: 2.0 * d, backward: 3.0 * d };
    let per_slot = expert + scatter;
    TokenFlops::linear(d, e) + TokenFlops { forward: slots * per_slot.forward, backward: slots * per_slot.backward }
}

/// Product-key retrieval for `heads` queries of `key_dim` against two tables of `n` sub-keys of
/// `key_dim/2`: the query map `d → heads·key_dim`; forward, the scores of every sub-key (`n·key_dim`
/// multiply-adds per head) and up to `k²` candidate sums per head (fewer when the pruning stops early;
/// counted in full); backward, only the k selected pairs per head: the query halves' and both sub-keys'
/// gradients, `2·key_dim` multiply-adds each.
fn product_key_router(keys: &ProductKeyConfig, n: usize) -> TokenFlops {
    let (h, n, k, kd) = (keys.heads as f64, n as f64, keys.top_k as f64, keys.key_dim as f64);
    let scores = TokenFlops { forward: h * (2.0 * n * kd + k * k), backward: h * k * 4.0 * kd };
    TokenFlops::linear(keys.d_model as f64, h * kd) + scores
}

/// PKM: the router, then a weighted sum of `heads·k` value rows (backward: the value rows' gradients and
/// the weights' dot products).
pub fn pkm(config: &PkmConfig) -> TokenFlops {
    let keys = &config.keys;
    let (d, slots) = (keys.d_model as f64, (keys.heads * keys.top_k) as f64);
    product_key_router(keys, config.sub_keys) + TokenFlops { forward: 2.0 * slots * d, backward: 4.0 * slots * d }
}

/// PEER: the router, then `heads·k` single-neuron experts, each a dot product `u·x` and an axpy of `v`
/// forward, and four such d-wide passes backward (`v·dout`, `dv`, `dx`, `du`; He 2024, eq. 3).
pub fn peer(config: &PeerConfig) -> TokenFlops {
    let keys = &config.keys;
    let (d, slots) = (keys.d_model as f64, (keys.heads * keys.top_k) as f64);
    product_key_router(keys, config.sub_keys()) + TokenFlops { forward: 4.0 * slots * d, backward: 8.0 * slots * d }
}

/// The feed-forward layer of block `block`.
pub fn feed_forward(config: &ModelConfig, block: usize) -> TokenFlops {
    match config.ffw_of(block) {
        FfwKind::Dense => dense(&config.dense),
        FfwKind::Moe => moe(&config.moe),
        FfwKind::Pkm => pkm(&config.pkm),
        FfwKind::Peer => peer(&config.peer),
    }
}

/// The output head `d → V` (tied or not, the same product).
pub fn output_head(config: &ModelConfig) -> TokenFlops {
    TokenFlops::linear(config.d_model as f64, config.vocab_size as f64)
}

/// The whole decoder per token at full context: every block's attention and feed-forward layer, and the
/// output head.
pub fn model(config: &ModelConfig) -> TokenFlops {
    let blocks: TokenFlops =
        (0..config.n_layers).map(|b| attention(config.d_model, config.seq_len) + feed_forward(config, b)).sum();
    blocks + output_head(config)
}

/// Training FLOPs per token: forward plus backward.
pub fn train_flops_per_token(config: &ModelConfig) -> f64 {
    model(config).train()
}

/// Most steps a budget may buy: beyond 2^53 a step count is no longer exact in an f64.
const MAX_STEPS: f64 = (1u64 << 53) as f64;

/// Steps a run of `budget` training FLOPs takes at `tokens_per_step`, rounded to the nearest whole step.
/// Errors if the budget is not a positive number, buys less than one step, or more than 2^53.
pub fn steps_for_budget(config: &ModelConfig, budget: f64, tokens_per_step: usize) -> Result<u64, Error> {
    if !(budget.is_finite() && budget > 0.0) {
        return Err(Error::Invalid(format!("--flops {budget}: the budget must be a positive number of FLOPs")));
    }
    let per_step = train_flops_per_token(config) * tokens_per_step as f64;
    let steps = (budget / per_step).round();
    if steps < 1.0 {
        return Err(Error::Invalid(format!(
            "--flops {budget:e} buys no whole step: one step costs {per_step:.3e} FLOPs"
        )));
    }
    if steps > MAX_STEPS {
        return Err(Error::Invalid(format!(
            "--flops {budget:e} buys {steps:.3e} steps of {per_step:.3e} FLOPs, more than 2^53"
        )));
    }
    Ok(steps as u64)
}
