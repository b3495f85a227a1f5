//! `peerlm sample`: continue a prompt with a trained model.

use std::error::Error;
use std::path::PathBuf;

use clap::Args;

use peerlm::infer::Options;

use super::{open_model, Utf8Printer};

#[derive(Args)]
pub struct SampleArgs {
    /// A model file written by `peerlm export`, or a checkpoint written by `peerlm train` (memory-mapped).
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
    /// Also check the expert and value tables against the file's checksums (streaming reads; the other
    /// tensors are always checked).
    #[arg(long)]
    verify_tables: bool,
}

pub fn run(args: &SampleArgs) -> Result<(), Box<dyn Error>> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(
            format!("--temperature {}: must be a number >= 0 (0 picks the likeliest token)", args.temperature).into()
        );
    }
    let mut model = open_model(&args.checkpoint, |_| 1, args.no_memory_check, args.verify_tables)?;
    let options = Options {
        max_new_tokens: args.tokens,
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        seed: args.seed,
        stop_at_end_of_text: true,
    };
    let mut printer = Utf8Printer::start(&args.prompt)?;
    model.generate(&args.prompt, &options, |_, bytes| printer.print(bytes))?;
    printer.finish()
}
