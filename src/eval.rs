//! Evaluation the way the paper reports it: perplexity on held-out text, bits per byte (comparable across
//! tokenizers), and for retrieval layers the expert usage and the KL divergence of the selection
//! distribution from uniform (He 2024, §3.3 and Table 2).
//!
//! [`evaluate`] is the trainer's quick validation: windows consecutive and non-overlapping over the shards
//! ([`TokenDataset::valid_batches`]), crossing document boundaries, with the tail shorter than a window
//! left out. [`text`] scores whole documents under a stated protocol (`peerlm eval`), and [`lambada`] the
//! last-word task.

use crate::data::loader::TokenDataset;
use crate::model::Gpt;
use crate::tape::Tape;

pub mod lambada;
pub mod text;

/// Expert (or memory slot) usage of one retrieval layer over an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerUsage {
    pub block: usize,
    /// Share of experts selected at least once.
    pub fraction_used: f64,
    /// The paper's unevenness: KL(gate-weighted usage ‖ uniform), in nats.
    pub kl_from_uniform: f64,
    /// KL(selection counts ‖ uniform), in nats.
    pub selection_kl_from_uniform: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub tokens: usize,
    /// Mean cross-entropy in nats per token.
    pub loss: f64,
    pub perplexity: f64,
    /// Cross-entropy in bits per byte of text, when the bytes of each token are known.
    pub bits_per_byte: Option<f64>,
    pub usage: Vec<LayerUsage>,
}

/// Scores up to `max_batches` validation batches (0: all). `token_len` gives the UTF-8 bytes each token
/// stands for (from the tokenizer), for bits per byte.
pub fn evaluate(
    model: &mut Gpt<f32>,
    data: &TokenDataset,
    batch_size: usize,
    max_batches: usize,
    token_len: Option<&dyn Fn(u32) -> usize>,
) -> EvalReport {
    model.track_usage(true);
    let limit = if max_batches == 0 { usize::MAX } else { max_batches };
    let (mut nats, mut tokens, mut bytes) = (0.0, 0usize, 0usize);
    for batch in data.valid_batches(batch_size).take(limit) {
        let mut tape = Tape::no_grad();
        let (_, ce) = model.loss(&mut tape, &batch.inputs, &batch.targets, batch.batch_size, false);
        nats += ce * batch.targets.len() as f64;
        tokens += batch.targets.len();
        if let Some(len) = token_len {
            bytes += batch.targets.iter().map(|&t| len(t)).sum::<usize>();
        }
    }
    let usage = layer_usage(model);
    model.track_usage(false);
    let loss = nats / tokens.max(1) as f64;
    EvalReport {
        tokens,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: (bytes > 0).then(|| nats / std::f64::consts::LN_2 / bytes as f64),
        usage,
    }
}

/// The usage counted in each retrieval layer since tracking was switched on ([`Gpt::track_usage`]).
pub fn layer_usage(model: &Gpt<f32>) -> Vec<LayerUsage> {
    model
        .blocks
        .iter()
        .enumerate()
        .filter_map(|(block, b)| {
            b.ffw.usage().map(|u| LayerUsage {
                block,
                fraction_used: u.fraction_used(),
                kl_from_uniform: u.kl_from_uniform(),
                selection_kl_from_uniform: u.selection_kl_from_uniform(),
            })
        })
        .collect()
}
