//! `peerlm eval`: perplexity, bits per byte and expert usage of a checkpoint on held-out data.

use std::error::Error;
use std::path::PathBuf;

use clap::Args;
use peerlm::data::TokenDataset;

use super::{load_model, shard_paths};

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint written by `peerlm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prepared data directories (from `peerlm prepare`); each one's valid_*.bin shards are scored.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Batches per data set at most (0: all).
    #[arg(long, default_value_t = 0)]
    batches: usize,
    /// Load the model even if its estimated memory exceeds what is available.
    #[arg(long)]
    no_memory_check: bool,
}

pub fn run(args: &EvalArgs) -> Result<(), Box<dyn Error>> {
    if args.batch_size == 0 {
        return Err("--batch-size 0: must be at least 1".into());
    }
    let (mut model, tokenizer) = load_model(&args.checkpoint, args.batch_size, args.no_memory_check)?;
    let seq_len = model.config().seq_len;
    let token_len = |id: u32| tokenizer.token_bytes(id).map_or(0, <[u8]>::len);
    for dir in &args.data {
        let data = TokenDataset::open(&shard_paths(dir, "valid")?, seq_len)?;
        if data.vocab_size() as usize > model.config().vocab_size {
            return Err(format!("{}: tokens of a vocabulary larger than the model's", dir.display()).into());
        }
        let report = peerlm::eval::evaluate(&mut model, &data, args.batch_size, args.batches, Some(&token_len));
        let bpb = report.bits_per_byte.map_or("-".into(), |b| format!("{b:.4}"));
        println!(
            "{}: {} tokens, loss {:.4}, perplexity {:.2}, bits per byte {bpb}",
            dir.display(),
            report.tokens,
            report.loss,
            report.perplexity
        );
        for usage in &report.usage {
            println!(
                "  block {}: expert usage {:.2}%, KL from uniform {:.4} nats",
                usage.block,
                100.0 * usage.fraction_used,
                usage.kl_from_uniform
            );
        }
    }
    Ok(())
}
