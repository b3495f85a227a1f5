//! The GPT-style decoder: token embeddings, learned or rotary positions, pre-norm blocks of causal
//! attention and a feed-forward layer, a final norm and the output head (Radford et al. 2019; Karpathy's
//! llm.c).
//!
//! Each block's feed-forward layer is dense, MoE, PKM or PEER, chosen by [`ModelConfig`]; everything else
//! is shared, so comparing layers at equal FLOPs compares only the layer.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::kernels::Float;
use crate::model::config::{FfwKind, ModelConfig, Positions};
use crate::nn::attention::{Attention, KvCache};
use crate::nn::ffw::DenseFfw;
use crate::nn::layer_norm::LayerNorm;
use crate::nn::moe::Moe;
use crate::nn::peer::Peer;
use crate::nn::pkm::Pkm;
use crate::nn::usage::ExpertUsage;
use crate::nn::{FfwOut, Module};
use crate::ops;
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// One block's feed-forward layer.
pub enum FeedForward<T: Float = f32> {
    Dense(DenseFfw<T>),
    Moe(Moe<T>),
    Pkm(Pkm<T>),
    Peer(Peer<T>),
}

impl<T: Float> FeedForward<T> {
    fn new(config: &ModelConfig, block: usize, rng: &mut Rng) -> Self {
        let name = format!("blocks.{block}.ffw");
        match config.ffw_of(block) {
            FfwKind::Dense => FeedForward::Dense(DenseFfw::new(&config.dense, &name, rng)),
            FfwKind::Moe => FeedForward::Moe(Moe::new(&config.moe, &name, rng)),
            FfwKind::Pkm => FeedForward::Pkm(Pkm::new(&config.pkm, &name, rng)),
            FfwKind::Peer => FeedForward::Peer(Peer::new(&config.peer, &name, rng)),
        }
    }

    fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, training: bool) -> FfwOut<T> {
        match self {
            FeedForward::Dense(layer) => layer.forward(tape, x, training),
            FeedForward::Moe(layer) => layer.forward(tape, x, training),
            FeedForward::Pkm(layer) => layer.forward(tape, x, training),
            FeedForward::Peer(layer) => layer.forward(tape, x, training),
        }
    }

    fn module(&self) -> &dyn Module<T> {
        match self {
            FeedForward::Dense(layer) => layer,
            FeedForward::Moe(layer) => layer,
            FeedForward::Pkm(layer) => layer,
            FeedForward::Peer(layer) => layer,
        }
    }

    fn module_mut(&mut self) -> &mut dyn Module<T> {
        match self {
            FeedForward::Dense(layer) => layer,
            FeedForward::Moe(layer) => layer,
            FeedForward::Pkm(layer) => layer,
            FeedForward::Peer(layer) => layer,
        }
    }

    /// Starts or stops counting expert (or memory slot) selections; dense layers have none.
    pub fn track_usage(&mut self, on: bool) {
        match self {
            FeedForward::Dense(_) => {}
            FeedForward::Moe(layer) => layer.usage.switch(on),
            FeedForward::Pkm(layer) => layer.usage.switch(on),
            FeedForward::Peer(layer) => layer.usage.switch(on),
        }
    }

    pub fn usage(&self) -> Option<&ExpertUsage> {
        match self {
            FeedForward::Dense(_) => None,
            FeedForward::Moe(layer) => layer.usage.get(),
            FeedForward::Pkm(layer) => layer.usage.get(),
            FeedForward::Peer(layer) => layer.usage.get(),
        }
    }
}

/// Pre-norm transformer block: `x + attn(ln1(x))`, then `x + ffw(ln2(x))`.
pub struct Block<T: Float = f32> {
    ln1: LayerNorm<T>,
    attn: Attention<T>,
    ln2: LayerNorm<T>,
    pub ffw: FeedForward<T>,
}

impl<T: Float> Block<T> {
    fn new(config: &ModelConfig, block: usize, rng: &mut Rng) -> Self {
        let name = format!("blocks.{block}");
        Block {
            ln1: LayerNorm::new(&format!("{name}.ln1"), config.d_model, config.norm_eps),
            attn: Attention::new(
                &format!("{name}.attn"),
                config.d_model,
                config.n_heads,
                config.n_layers,
                config.positions == Positions::Rotary,
                rng,
            ),
            ln2: LayerNorm::new(&format!("{name}.ln2"), config.d_model, config.norm_eps),
            ffw: FeedForward::new(config, block, rng),
        }
    }

    /// `x` is `[batch, seq, d]`; `cache`, when given, makes attention see earlier positions too.
    fn forward(
        &mut self,
        tape: &mut Tape<T>,
        x: &Var<T>,
        cache: Option<&mut KvCache<T>>,
        training: bool,
    ) -> (Var<T>, Option<Var<T>>) {
        let h = self.ln1.forward(tape, x);
        let attended = match cache {
            Some(cache) => self.attn.forward_cached(tape, &h, cache),
            None => self.attn.forward(tape, &h),
        };
        let x = ops::add(tape, x, &attended);
        // The feed-forward layers act on tokens independently: flatten batch and sequence.
        let shape = x.shape().to_vec();
        let h = self.ln2.forward(tape, &x);
        let tokens = ops::reshape(tape, &h, &[shape[0] * shape[1], shape[2]]);
        let out = self.ffw.forward(tape, &tokens, training);
        let y = ops::reshape(tape, &out.y, &shape);
        (ops::add(tape, &x, &y), out.aux_loss)
    }

    fn modules(&self) -> [&dyn Module<T>; 4] {
        [&self.ln1, &self.attn, &self.ln2, self.ffw.module()]
    }

    fn modules_mut(&mut self) -> [&mut dyn Module<T>; 4] {
        [&mut self.ln1, &mut self.attn, &mut self.ln2, self.ffw.module_mut()]
    }
}

pub struct Gpt<T: Float = f32> {
    config: ModelConfig,
    token_embedding: Param<T>,
    /// `[seq_len, d_model]` with learned positions; `None` with rotary ones (applied inside attention).
    position_embedding: Option<Param<T>>,
    pub blocks: Vec<Block<T>>,
    ln_f: LayerNorm<T>,
    /// `[d_model, vocab]`, or `None` when the head reuses the token embedding.
    head: Option<Param<T>>,
}

/// Logits for every input position, and the sum of the layers' auxiliary losses (MoE load balancing).
pub struct Output<T: Float = f32> {
    /// `[batch·seq, vocab]`.
    pub logits: Var<T>,
    pub aux_loss: Option<Var<T>>,
}

impl<T: Float> Gpt<T> {
    /// Builds the model with GPT-2's initialisation (N(0, 0.02²) embeddings); `config` must be valid.
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        Self::with_rng(config, Rng::new(seed))
    }

    /// The model's structure with untouched zeros for weights, to be replaced by a file's (see
    /// [`Rng::placeholder`]): building it costs no time or memory however large its tables.
    pub fn placeholder(config: &ModelConfig) -> Self {
        Self::with_rng(config, Rng::placeholder())
    }

    fn with_rng(config: &ModelConfig, root: Rng) -> Self {
        let (d, vocab) = (config.d_model, config.vocab_size);
        let token_embedding =
            Param::new("token_embedding", ParamKind::Weight, Tensor::randn(&[vocab, d], 0.02, &mut root.fork(1)));
        let position_embedding = (config.positions == Positions::Learned).then(|| {
            Param::new(
                "position_embedding",
                ParamKind::Weight,
                Tensor::randn(&[config.seq_len, d], 0.01, &mut root.fork(2)),
            )
        });
        let blocks = (0..config.n_layers).map(|b| Block::new(config, b, &mut root.fork(100 + b as u64))).collect();
        let head = (!config.tie_embeddings)
            .then(|| Param::new("head", ParamKind::Weight, Tensor::randn(&[d, vocab], 0.02, &mut root.fork(3))));
        Gpt {
            config: config.clone(),
            token_embedding,
            position_embedding,
            blocks,
            ln_f: LayerNorm::new("ln_f", d, config.norm_eps),
            head,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Forward over `batch` sequences laid end to end in `tokens` (each `tokens.len() / batch` long).
    pub fn forward(&mut self, tape: &mut Tape<T>, tokens: &[u32], batch: usize, training: bool) -> Output<T> {
        self.run(tape, tokens, batch, None, training)
    }

    /// Inference over new tokens of one sequence, extending `caches` (one per block); positions continue
    /// from the cached length, which must stay below `seq_len`.
    pub fn forward_cached(&mut self, tape: &mut Tape<T>, tokens: &[u32], caches: &mut [KvCache<T>]) -> Var<T> {
        assert_eq!(caches.len(), self.blocks.len(), "forward_cached: one cache per block");
        self.run(tape, tokens, 1, Some(caches), false).logits
    }

    fn run(
        &mut self,
        tape: &mut Tape<T>,
        tokens: &[u32],
        batch: usize,
        mut caches: Option<&mut [KvCache<T>]>,
        training: bool,
    ) -> Output<T> {
        let seq = tokens.len() / batch;
        assert_eq!(seq * batch, tokens.len(), "Gpt::forward: {} tokens do not split into {batch} rows", tokens.len());
        let start = caches.as_ref().map_or(0, |c| c[0].len());
        assert!(start + seq <= self.config.seq_len, "Gpt::forward: positions {start}+{seq} exceed seq_len");
        let d = self.config.d_model;

        let wte = tape.param(&self.token_embedding);
        let tok = ops::embedding(tape, &wte, tokens);
        let tok = ops::reshape(tape, &tok, &[batch, seq, d]);
        let mut x = match &self.position_embedding {
            Some(table) => {
                let wpe = tape.param(table);
                let pos = ops::narrow(tape, &wpe, 0, start, seq);
                ops::add(tape, &tok, &pos)
            }
            None => tok,
        };

        let mut aux_loss: Option<Var<T>> = None;
        for (b, block) in self.blocks.iter_mut().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[b]);
            let (y, aux) = block.forward(tape, &x, cache, training);
            x = y;
            aux_loss = match (aux_loss, aux) {
                (Some(total), Some(a)) => Some(ops::add(tape, &total, &a)),
                (total, a) => total.or(a),
            };
        }
        let x = self.ln_f.forward(tape, &x);
        let logits = match &self.head {
            Some(head) => {
                let w = tape.param(head);
                let x = ops::reshape(tape, &x, &[batch * seq, d]);
                ops::matmul(tape, &x, &w)
            }
            None => {
                // Tied: logits = x · Eᵀ, the embedding read transposed by strides.
                let x = ops::reshape(tape, &x, &[1, batch * seq, d]);
                let e = ops::reshape(tape, &wte, &[1, self.config.vocab_size, d]);
                let logits = ops::bmm(tape, &x, &e, false, true);
                ops::reshape(tape, &logits, &[batch * seq, self.config.vocab_size])
            }
        };
        Output { logits, aux_loss }
    }

    /// Mean next-token cross-entropy of `inputs` against `targets` plus any auxiliary loss; returns the
    /// loss to differentiate and the cross-entropy alone (what perplexity is made of).
    pub fn loss(
        &mut self,
        tape: &mut Tape<T>,
        inputs: &[u32],
        targets: &[u32],
        batch: usize,
        training: bool,
    ) -> (Var<T>, f64) {
        let out = self.forward(tape, inputs, batch, training);
        let ce = ops::cross_entropy(tape, &out.logits, targets, None);
        let ce_value = ce.value().item().to_f64();
        let loss = match out.aux_loss {
            Some(aux) => ops::add(tape, &ce, &aux),
            None => ce,
        };
        (loss, ce_value)
    }

    /// One empty cache per block, for [`Gpt::forward_cached`].
    pub fn new_caches(&self) -> Vec<KvCache<T>> {
        vec![KvCache::default(); self.blocks.len()]
    }

    /// Starts or stops counting expert selections in every retrieval layer.
    pub fn track_usage(&mut self, on: bool) {
        self.blocks.iter_mut().for_each(|b| b.ffw.track_usage(on));
    }

    /// Non-trainable state a checkpoint must keep: batch-norm running statistics, as
    /// `<layer>.running_mean` and `<layer>.running_var` tensors.
    pub fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        let mut buffers = Vec::new();
        for block in &self.blocks {
            for (name, stats) in block.ffw.module().batch_norm_stats() {
                let n = stats.mean.len();
                buffers.push((format!("{name}.running_mean"), Tensor::from_vec(&[n], stats.mean.clone())));
                buffers.push((format!("{name}.running_var"), Tensor::from_vec(&[n], stats.var.clone())));
            }
        }
        buffers
    }

    /// Moves the tensors of [`Gpt::buffers`] out of `tensors` into the layers.
    pub fn load_buffers(&mut self, tensors: &mut BTreeMap<String, Tensor<T>>) -> Result<(), Error> {
        for block in &mut self.blocks {
            for (name, stats) in block.ffw.module_mut().batch_norm_stats_mut() {
                for (suffix, values) in [("running_mean", &mut stats.mean), ("running_var", &mut stats.var)] {
                    let key = format!("{name}.{suffix}");
                    let tensor = tensors.remove(&key).ok_or_else(|| Error::Invalid(format!("no tensor {key}")))?;
                    if tensor.numel() != values.len() {
                        return Err(Error::Invalid(format!(
                            "{key} has {} values, the layer {}",
                            tensor.numel(),
                            values.len()
                        )));
                    }
                    *values = tensor.into_vec();
                }
            }
        }
        Ok(())
    }

    /// Total number of parameter elements.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.value.numel()).sum()
    }
}

impl<T: Float> Module<T> for Gpt<T> {
    fn params(&self) -> Vec<&Param<T>> {
        let mut params = vec![&self.token_embedding];
        params.extend(self.position_embedding.as_ref());
        for block in &self.blocks {
            block.modules().into_iter().for_each(|m| params.extend(m.params()));
        }
        params.extend(self.ln_f.params());
        params.extend(self.head.as_ref());
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = vec![&mut self.token_embedding];
        params.extend(self.position_embedding.as_mut());
        for block in &mut self.blocks {
            block.modules_mut().into_iter().for_each(|m| params.extend(m.params_mut()));
        }
        params.extend(self.ln_f.params_mut());
        params.extend(self.head.as_mut());
        params
    }
}
