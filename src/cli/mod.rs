//! The subcommands of `peerlm`, one file each; this file parses, dispatches, and holds what several
//! subcommands share (finding shards, loading a checkpoint, printing a sample).

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peerlm::data::{TokenDataset, Tokenizer, TokenizerId};
use peerlm::infer::{Model, OpenOptions, Verify};
use peerlm::model::memory::{self as model_memory, MemoryEstimate};
use peerlm::model::{Gpt, ModelConfig};
use peerlm::sample::{generate, SampleConfig};

mod eval;
mod export;
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
    /// Write a checkpoint's model (weights, config, tokenizer; no optimizer state) as an inference file.
    Export(export::ExportArgs),
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
        Command::Export(args) => export::run(&args)?,
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

/// The model (and tokenizer) of a model file or training checkpoint, memory-mapped, if its activations at
/// `batch_size` sequences fit in memory (the weights are mapped: the page cache holds them, not the heap);
/// `verify_tables` also checks the tables' checksums by streaming reads.
fn open_model(
    path: &Path,
    batch_size: impl Fn(&ModelConfig) -> usize,
    unchecked: bool,
    verify_tables: bool,
) -> Result<Model, Box<dyn Error>> {
    let verify = if verify_tables { Verify::All } else { Verify::Small };
    let model = Model::open_with(path, &OpenOptions { verify, ..OpenOptions::default() })?;
    let estimate = model_memory::inference(model.config(), batch_size(model.config()));
    memory::check(&path.display().to_string(), &MemoryEstimate { param_bytes: 0.0, ..estimate }, unchecked)?;
    Ok(model)
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
    let mut printer = Utf8Printer::start(prompt)?;
    generate(model, &prompt_ids, &config, |token| printer.print(tokenizer.token_bytes(token).unwrap_or_default()));
    printer.finish()
}

/// Prints a sample's text as its tokens' bytes arrive: tokens may split a UTF-8 character, so it prints
/// only what is complete and keeps the tail.
struct Utf8Printer {
    out: std::io::StdoutLock<'static>,
    pending: Vec<u8>,
}

impl Utf8Printer {
    fn start(prompt: &str) -> Result<Self, Box<dyn Error>> {
        let mut out = std::io::stdout().lock();
        write!(out, "sample: {prompt}")?;
        Ok(Utf8Printer { out, pending: Vec::new() })
    }

    fn print(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) => e.valid_up_to(),
        };
        let _ = self.out.write_all(&self.pending[..valid]);
        let _ = self.out.flush();
        self.pending.drain(..valid);
    }

    fn finish(mut self) -> Result<(), Box<dyn Error>> {
        writeln!(self.out)?;
        Ok(())
    }
}
