//! `peerlm sample`: continue a prompt with a trained model.

use std::error::Error;
use std::path::PathBuf;

use clap::Args;

use super::{load_model, print_sample};

#[derive(Args)]
pub struct SampleArgs {
    /// A checkpoint written by `peerlm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "The")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// 0 picks the most likely token each time.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Load the model even if its estimated memory exceeds what is available.
    #[arg(long)]
    no_memory_check: bool,
}

pub fn run(args: &SampleArgs) -> Result<(), Box<dyn Error>> {
    let (mut model, tokenizer) = load_model(&args.checkpoint, |_| 1, args.no_memory_check)?;
    let top_k = (args.top_k > 0).then_some(args.top_k);
    print_sample(&mut model, &tokenizer, &args.prompt, args.tokens, args.temperature, top_k, args.seed)
}
