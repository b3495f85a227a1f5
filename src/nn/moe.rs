//! Mixture of experts: a router sends each token to a few of E dense feed-forward experts.
//!
//! This is the sparse baseline of the PEER paper: few, large experts (each a GPT-2 MLP of width
//! `d_expert`), against PEER's many single-neuron ones. Two routing rules:
//!
//! - **Token choice** (Switch, Fedus et al. 2021; GShard, Lepikhin et al. 2020): each token picks its
//!   `top_k` experts by router logit. Its gates are the selected router probabilities renormalised to sum to
//!   1, as in GShard; since `p_i / Σ_selected p_j = exp(l_i) / Σ_selected exp(l_j)`, that is computed as the
//!   softmax of the selected logits. Nothing stops many tokens from choosing the same expert, so a
//!   load-balancing loss is returned (see [`MoeConfig::aux_loss_weight`]). There is no capacity limit: no
//!   token is dropped.
//! - **Expert choice** (Zhou et al. 2022; the MoE baseline of He 2024, and the default here): router
//!   probabilities are a softmax over experts per token; each expert then takes the
//!   `c = ⌈capacity_factor · tokens · top_k / E⌉` tokens with the highest probability for it, gated by that
//!   probability. Load is balanced by construction, no auxiliary loss. **Training is not causal**: whether
//!   a token is picked depends on the other tokens of the batch, later ones included, so a token's
//!   training loss can depend on the future (true of the original method, and so of the paper's
//!   baseline). **Evaluation and sampling are causal**: a token cannot wait for the batch, so each token
//!   goes to the experts most likely to pick it, its own top `round(capacity_factor · top_k)` by router
//!   probability (the average number of experts a token gets in training), gated by those probabilities
//!   as in training. A token's output then depends on that token alone.
//!
//! Dispatch is gather → expert → weighted scatter: the rows of the tokens routed to expert e are gathered
//! with [`ops::embedding`] (the activations play the table; the row-sparse gradient is densified by the
//! tape), the expert runs on that small batch, and [`ops::scatter_rows`] adds each output row, times its
//! gate, back into its token's row.

use crate::error::Error;
use crate::kernels::Float;
use crate::nn::ffw::{positive, GPT2_INIT_STD};
use crate::nn::{DenseFfw, DenseFfwConfig, FfwOut, Linear, Module, UsageTracker};
use crate::ops;
use crate::param::Param;
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(rename_all = "snake_case"))]
pub enum Routing {
    /// Each token picks its top-k experts (causal; needs the load-balancing loss).
    TokenChoice,
    /// Each expert picks its top-c tokens (balanced; not causal).
    ExpertChoice,
}

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct MoeConfig {
    /// Width of the residual stream; a config file may leave it out (the model's `d_model` is used).
    #[cfg_attr(feature = "io", serde(default))]
    pub d_model: usize,
    /// E, the number of experts.
    pub num_experts: usize,
    /// Hidden width of each expert's MLP.
    pub d_expert: usize,
    /// Experts per token (token choice); with expert choice it sets the capacity, `c` above.
    pub top_k: usize,
    /// Default: expert choice, the paper's baseline.
    #[cfg_attr(feature = "io", serde(default = "default_routing"))]
    pub routing: Routing,
    /// Expert choice only: tokens per expert relative to an even share. Default 1.0.
    #[cfg_attr(feature = "io", serde(default = "default_capacity_factor"))]
    pub capacity_factor: f64,
    /// Token choice only: weight of the load-balancing loss `E · Σ_e f_e · P_e`, where f_e is the share of
    /// token-slots routed to e (a constant: the top-k is not differentiable) and P_e the mean router
    /// probability of e (Switch Transformer, eq. 4). Default 0.01.
    #[cfg_attr(feature = "io", serde(default = "default_aux_loss_weight"))]
    pub aux_loss_weight: f64,
}

#[cfg(feature = "io")]
fn default_routing() -> Routing {
    Routing::ExpertChoice
}

#[cfg(feature = "io")]
fn default_capacity_factor() -> f64 {
    1.0
}

#[cfg(feature = "io")]
fn default_aux_loss_weight() -> f64 {
    0.01
}

impl MoeConfig {
    pub fn validate(&self) -> Result<(), Error> {
        positive("moe.d_model", self.d_model)?;
        positive("moe.num_experts", self.num_experts)?;
        positive("moe.d_expert", self.d_expert)?;
        if self.top_k == 0 || self.top_k > self.num_experts {
            return Err(Error::Invalid(format!(
                "moe.top_k: {} is not in 1..={} (num_experts)",
                self.top_k, self.num_experts
            )));
        }
        if !(self.capacity_factor.is_finite() && self.capacity_factor > 0.0) {
            return Err(Error::Invalid(format!(
                "moe.capacity_factor: {} is not a positive number",
                self.capacity_factor
            )));
        }
        if !(self.aux_loss_weight.is_finite() && self.aux_loss_weight >= 0.0) {
            return Err(Error::Invalid(format!(
                "moe.aux_loss_weight: {} is not a non-negative number",
                self.aux_loss_weight
            )));
        }
        Ok(())
    }

    /// Experts each token takes with expert choice at evaluation: as many as it gets on average in
    /// training, `capacity_factor · top_k`, rounded, and at least one.
    pub fn experts_per_token(&self) -> usize {
        ((self.capacity_factor * self.top_k as f64).round() as usize).clamp(1, self.num_experts)
    }

    /// Tokens each expert takes with expert choice, out of `tokens`.
    pub fn expert_capacity(&self, tokens: usize) -> usize {
        let even_share = self.capacity_factor * (tokens * self.top_k) as f64 / self.num_experts as f64;
        (even_share.ceil() as usize).clamp(1, tokens.max(1))
    }
}

pub struct Moe<T: Float = f32> {
    config: MoeConfig,
    /// `{name}.router`: d_model → E, no bias, N(0, 0.02²).
    pub router: Linear<T>,
    /// `{name}.experts.{e}`: GPT-2 MLPs d_model → d_expert → d_model, initialised as [`DenseFfw`].
    pub experts: Vec<DenseFfw<T>>,
    /// Which experts the layer selects, once switched on.
    pub usage: UsageTracker,
}

impl<T: Float> Moe<T> {
    pub fn new(config: &MoeConfig, name: &str, rng: &mut Rng) -> Self {
        let router =
            Linear::new(&format!("{name}.router"), config.d_model, config.num_experts, false, GPT2_INIT_STD, rng);
        let expert_config = DenseFfwConfig { d_model: config.d_model, d_ff: config.d_expert };
        let experts = (0..config.num_experts)
            .map(|e| DenseFfw::new(&expert_config, &format!("{name}.experts.{e}"), rng))
            .collect();
        Moe { config: config.clone(), router, experts, usage: UsageTracker::new(config.num_experts) }
    }

    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// `x [tokens, d_model] → [tokens, d_model]`, plus the weighted load-balancing loss with token choice.
    /// Expert choice routes over the whole batch in training and token by token otherwise (see above).
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> FfwOut<T> {
        let logits = self.router.forward(tape, x);
        match (self.config.routing, training) {
            (Routing::TokenChoice, _) => self.token_choice(tape, x, &logits),
            (Routing::ExpertChoice, true) => self.expert_choice(tape, x, &logits),
            (Routing::ExpertChoice, false) => self.expert_choice_per_token(tape, x, &logits),
        }
    }

    fn token_choice(&mut self, tape: &mut Tape<T>, x: &Var<T>, logits: &Var<T>) -> FfwOut<T> {
        let (tokens, k, num_experts) = (x.shape()[0], self.config.top_k, self.config.num_experts);
        let (top_logits, expert_ids) = ops::topk(tape, logits, k);
        let gates = ops::softmax(tape, &top_logits); // = selected probabilities renormalised
        let (y, slots_of) = self.dispatch_slots(tape, x, &gates, &expert_ids);

        // Load balancing: w · E · Σ_e f_e · mean_t p_te = Σ_{t,e} p_te · (w · E · f_e / tokens), with
        // f_e = (slots routed to e) / (tokens · k), a constant.
        let probs = ops::softmax(tape, logits);
        let scale = self.config.aux_loss_weight * num_experts as f64 / (tokens * tokens * k) as f64;
        let per_expert = slots_of.iter().map(|s| T::from_f64(scale * s.len() as f64)).collect();
        let per_expert = tape.constant(Tensor::from_vec(&[num_experts], per_expert));
        let weighted = ops::mul(tape, &probs, &per_expert);
        FfwOut { y, aux_loss: Some(ops::sum(tape, &weighted)) }
    }

    fn expert_choice(&mut self, tape: &mut Tape<T>, x: &Var<T>, logits: &Var<T>) -> FfwOut<T> {
        let (tokens, num_experts) = (x.shape()[0], self.config.num_experts);
        let capacity = self.config.expert_capacity(tokens);
        let probs = ops::softmax(tape, logits); // over experts, per token
        let probs_by_expert = ops::transpose(tape, &probs, 0, 1); // [E, tokens]
        let (gates, token_ids) = ops::topk(tape, &probs_by_expert, capacity); // [E, c]
        let expert_ids: Vec<u32> = (0..num_experts as u32).flat_map(|e| std::iter::repeat_n(e, capacity)).collect();
        self.usage.record(&expert_ids, gates.value().data());
        let tokens_of: Vec<Vec<u32>> = token_ids.chunks(capacity).map(<[u32]>::to_vec).collect();
        let gates = ops::reshape(tape, &gates, &[num_experts * capacity]);
        FfwOut { y: self.dispatch(tape, x, &tokens_of, &gates), aux_loss: None }
    }

    /// Expert choice at evaluation: each token takes its own top `round(capacity_factor · top_k)` experts
    /// by router probability, gated by those probabilities (not renormalised, as in training).
    fn expert_choice_per_token(&mut self, tape: &mut Tape<T>, x: &Var<T>, logits: &Var<T>) -> FfwOut<T> {
        let probs = ops::softmax(tape, logits);
        let (gates, expert_ids) = ops::topk(tape, &probs, self.config.experts_per_token());
        FfwOut { y: self.dispatch_slots(tape, x, &gates, &expert_ids).0, aux_loss: None }
    }

    /// Runs the experts on the slots each token chose: `gates` `[tokens, k]` and `expert_ids` `[tokens·k]`,
    /// where slot `s = t·k + j` is token t's j-th choice. Returns the output and the slots of each expert.
    fn dispatch_slots(
        &mut self,
        tape: &mut Tape<T>,
        x: &Var<T>,
        gates: &Var<T>,
        expert_ids: &[u32],
    ) -> (Var<T>, Vec<Vec<u32>>) {
        let (tokens, k) = (x.shape()[0], gates.shape()[1]);
        self.usage.record(expert_ids, gates.value().data());
        let mut slots_of = vec![Vec::new(); self.config.num_experts];
        for (slot, &e) in expert_ids.iter().enumerate() {
            slots_of[e as usize].push(slot as u32);
        }
        let tokens_of: Vec<Vec<u32>> =
            slots_of.iter().map(|slots| slots.iter().map(|&s| s / k as u32).collect()).collect();
        // Put the gates in the same expert-major order as the expert outputs will be.
        let slot_order: Vec<u32> = slots_of.concat();
        let gate_column = ops::reshape(tape, gates, &[tokens * k, 1]);
        let gates_in_order = ops::embedding(tape, &gate_column, &slot_order);
        let gates_in_order = ops::reshape(tape, &gates_in_order, &[slot_order.len()]);
        (self.dispatch(tape, x, &tokens_of, &gates_in_order), slots_of)
    }

    /// Runs every expert e on its tokens `tokens_of[e]` and adds the gated outputs back into their rows:
    /// `gates` holds one gate per (expert, token) pair in the same expert-major order.
    fn dispatch(&self, tape: &mut Tape<T>, x: &Var<T>, tokens_of: &[Vec<u32>], gates: &Var<T>) -> Var<T> {
        let mut outputs = Vec::new();
        for (expert, tokens) in self.experts.iter().zip(tokens_of) {
            if !tokens.is_empty() {
                let expert_in = ops::embedding(tape, x, tokens);
                outputs.push(expert.apply(tape, &expert_in));
            }
        }
        let outputs: Vec<&Var<T>> = outputs.iter().collect();
        let all_outputs = ops::concat(tape, &outputs, 0);
        let rows = tokens_of.concat();
        ops::scatter_rows(tape, &all_outputs, &rows, gates, x.shape()[0])
    }
}

impl<T: Float> Module<T> for Moe<T> {
    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.router.params();
        params.extend(self.experts.iter().flat_map(Module::params));
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.router.params_mut();
        params.extend(self.experts.iter_mut().flat_map(Module::params_mut));
        params
    }
}
