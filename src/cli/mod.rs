//! The subcommands of `peerlm`, one file each; this file parses, dispatches, and holds what several
//! subcommands share (finding shards, loading a checkpoint, printing a sample).

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use peerlm::checkpoint::Checkpoint;
use peerlm::data::{tokenizer_file, Tokenizer};
use peerlm::model::Gpt;
use peerlm::sample::{generate, SampleConfig};

mod eval;
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

pub fn run() -> Result<(), Box<dyn Error>> {
    match Cli::parse().command {
        Command::Prepare(args) => prepare::run(&args)?,
        Command::Train(args) => train::run(&args)?,
        Command::Eval(args) => eval::run(&args)?,
        Command::Sample(args) => sample::run(&args)?,
        Command::Sweep(args) => sweep::run(&args)?,
        Command::Report(args) => report::run(&args)?,
    }
    Ok(())
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

/// The model and tokenizer stored in a checkpoint.
fn load_model(path: &Path) -> Result<(Gpt<f32>, Tokenizer), Box<dyn Error>> {
    let (model, _, metadata) = peerlm::train::load_model(Checkpoint::load(path)?)?;
    let text =
        metadata.get("tokenizer").ok_or_else(|| format!("{}: the checkpoint holds no tokenizer", path.display()))?;
    let tokenizer = tokenizer_file::parse(text.as_bytes(), &format!("{} (tokenizer)", path.display()))?;
    Ok((model, tokenizer))
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
