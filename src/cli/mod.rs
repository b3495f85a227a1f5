//! The subcommands of `peerlm`, one file each; this file parses, dispatches, and holds what several
//! subcommands share (finding shards, loading a checkpoint, printing a sample).

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peerlm::checkpoint::Checkpoint;
use peerlm::data::{tokenizer_file, TokenDataset, Tokenizer, TokenizerId};
use peerlm::model::{memory as model_memory, Gpt, ModelConfig};
use peerlm::sample::{generate, SampleConfig};

mod eval;
mod interrupt;
mod memory;
mod prepare;
mod report;
mod sample;
mod sweep;
mod train;

#[derive(Parser)]
#[command(name = "peerlm", version, about = "PEER (Mixture of A Million Experts) from scratch on a CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a BPE tokenizer on C4 text and write train/validation token shards.
    Prepare(prepare::PrepareArgs),
    /// Train a model from a config file; prints validation perplexity and a sample at the end.
    Train(train::TrainArgs),
    /// Perplexity, bits per byte and expert usage of a checkpoint on held-out data.
    Eval(eval::EvalArgs),
    /// Continue a prompt with a trained model.
    Sample(sample::SampleArgs),
    /// Run (or list) the grid of training runs a sweep spec describes, resumably.
    Sweep(sweep::SweepArgs),
    /// Write docs/REPRODUCTION.md and its figures from the sweeps' run summaries.
    Report(report::ReportArgs),
}

/// Runs the command; the exit status is 0, or 130 for a training run stopped by Ctrl-C.
pub fn run() -> Result<ExitCode, Box<dyn Error>> {
    match Cli::parse().command {
        Command::Prepare(args) => prepare::run(&args)?,
        Command::Train(args) => return train::run(&args),
        Command::Eval(args) => eval::run(&args)?,
        Command::Sample(args) => sample::run(&args)?,
        Command::Sweep(args) => return sweep::run(&args),
        Command::Report(args) => report::run(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The `<split>_*.bin` shards of a prepared directory, sorted by name.
fn shard_paths(dir: &Path, split: &str) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(&format!("{split}_")) && name.ends_with(".bin")
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("{}: no {split}_*.bin shards (run `peerlm prepare` first)", dir.display()).into());
    }
    Ok(paths)
}

/// The model and tokenizer stored in a checkpoint, if the model fits in memory at `batch_size` sequences
/// (refused if
/// the tokenizer is not the one it was trained with: its hash is checked on load).
fn load_model(
    path: &Path,
    batch_size: impl Fn(&ModelConfig) -> usize,
    unchecked: bool,
) -> Result<(Gpt<f32>, Tokenizer), Box<dyn Error>> {
    let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let checkpoint = Checkpoint::load(path)?;
    let config = peerlm::train::checkpoint_config(&checkpoint).map_err(|e| in_file(&e))?;
    let needed = model_memory::inference(&config.model, batch_size(&config.model));
    memory::check(&path.display().to_string(), &needed, unchecked)?;
    let (model, _, metadata) = peerlm::train::load_model(checkpoint).map_err(|e| in_file(&e))?;
    let text = metadata.get("tokenizer").ok_or_else(|| in_file(&"the checkpoint holds no tokenizer"))?;
    let tokenizer = tokenizer_file::parse(text.as_bytes(), &format!("{} (tokenizer)", path.display()))?;
    if tokenizer.vocab_size() > model.config().vocab_size {
        return Err(in_file(&format_args!(
            "its tokenizer has {} tokens, more than the model's vocab_size {}",
            tokenizer.vocab_size(),
            model.config().vocab_size
        ))
        .into());
    }
    Ok((model, tokenizer))
}

/// The `<split>_*.bin` shards of a prepared directory, refused unless `tokenizer` wrote them; prints what
/// could not be checked.
fn open_shards(
    dir: &Path,
    split: &str,
    seq_len: usize,
    tokenizer: &TokenizerId,
) -> Result<TokenDataset, Box<dyn Error>> {
    let data = TokenDataset::open_for(&shard_paths(dir, split)?, seq_len, tokenizer)?;
    for warning in data.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(data)
}

/// Prints the prompt and its continuation as the tokens arrive.
fn print_sample(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    prompt: &str,
    tokens: usize,
    temperature: f64,
    top_k: Option<usize>,
    seed: u64,
) -> Result<(), Box<dyn Error>> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(format!("--temperature {temperature}: must be a number >= 0 (0 picks the likeliest token)").into());
    }
    let prompt_ids = tokenizer.encode(prompt);
    if prompt_ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    let config =
        SampleConfig { max_new_tokens: tokens, temperature, top_k, seed, stop_token: Some(tokenizer.end_of_text()) };
    let mut out = std::io::stdout().lock();
    write!(out, "sample: {prompt}")?;
    // Tokens may split a UTF-8 character: decode the growing tail and print only what is complete.
    let mut pending: Vec<u8> = Vec::new();
    generate(model, &prompt_ids, &config, |token| {
        if let Some(bytes) = tokenizer.token_bytes(token) {
            pending.extend_from_slice(bytes);
        }
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) => e.valid_up_to(),
        };
        let _ = out.write_all(&pending[..valid]);
        let _ = out.flush();
        pending.drain(..valid);
    });
    writeln!(out)?;
    Ok(())
}
