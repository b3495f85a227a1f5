//! `peerlm train`: train a model from a config file, print its validation perplexity and a sample.
//!
//! `--data` takes either a directory written by `peerlm prepare` or raw C4 files (`*.json.gz`); raw data is
//! prepared once into `<out>/data` with the model's vocabulary size, so a newcomer needs one command.

use std::error::Error;
use std::path::{Path, PathBuf};

use clap::Args;
use peerlm::data::{fnv, tokenizer_file, Tokenizer, TokenizerId};
use peerlm::model::flops;
use peerlm::train::{self, RunConfig, RunOptions, Trainer};

use super::{open_shards, prepare, print_sample};

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (JSON with "model" and "train" sections; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// A prepared data directory, or a directory of raw C4 *.json.gz files (its files named *validation*
    /// are held out).
    #[arg(long, default_value = "datasets/c4")]
    data: PathBuf,
    /// Output directory: checkpoint, metrics.jsonl, prepared data (default runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from <out>/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    /// Override the number of steps.
    #[arg(long, conflicts_with = "flops")]
    steps: Option<u64>,
    /// Set the number of steps from a training compute budget, e.g. 1e14.
    #[arg(long)]
    flops: Option<f64>,
    /// Prompt of the sample printed at the end ("" for none).
    #[arg(long, default_value = "The")]
    sample_prompt: String,
}

pub fn run(args: &TrainArgs) -> Result<(), Box<dyn Error>> {
    let mut config = RunConfig::load(&args.config)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.config.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    if let Some(budget) = args.flops {
        config.train.steps = train::steps_for_flops(&config, budget);
    }
    let data_dir = prepared_data(&args.data, &out, config.model.vocab_size)?;
    let tokenizer_path = data_dir.join("tokenizer.bpe");
    let tokenizer = tokenizer_file::load(&tokenizer_path)?;
    let checkpoint_path = out.join("checkpoint.safetensors");
    let mut trainer = if args.resume {
        let mut trainer = Trainer::from_checkpoint(peerlm::checkpoint::Checkpoint::load(&checkpoint_path)?)
            .map_err(|e| format!("{}: {e}", checkpoint_path.display()))?;
        if args.steps.is_some() || args.flops.is_some() {
            trainer.set_steps(config.train.steps)?;
        }
        check_same_tokenizer(&trainer, &checkpoint_path, &tokenizer, &tokenizer_path)?;
        eprintln!("resuming {} at step {}", checkpoint_path.display(), trainer.step_count());
        trainer
    } else {
        Trainer::new(config.clone())?
    };
    if tokenizer.vocab_size() != trainer.config.model.vocab_size {
        return Err(format!(
            "{}: the tokenizer has {} tokens but model.vocab_size is {}",
            tokenizer_path.display(),
            tokenizer.vocab_size(),
            trainer.config.model.vocab_size
        )
        .into());
    }
    trainer.set_tokenizer(tokenizer_file::to_text(&tokenizer));
    let seq_len = trainer.config.model.seq_len;
    let id = TokenizerId::of(&tokenizer, tokenizer_path.display().to_string());
    let train_data = open_shards(&data_dir, "train", seq_len, &id)?;
    let valid_data = open_shards(&data_dir, "valid", seq_len, &id)?;
    let per_token = flops::train_flops_per_token(&trainer.config.model);
    let tokens_per_step = trainer.config.train.batch_size * seq_len;
    eprintln!(
        "model: {:.2}M parameters, {:.3} MFLOP per training token; {} steps of {} tokens = {:.3e} FLOPs",
        trainer.model.num_params() as f64 / 1e6,
        per_token / 1e6,
        trainer.config.train.steps,
        tokens_per_step,
        per_token * (trainer.config.train.steps as usize * tokens_per_step) as f64
    );
    eprintln!("data: {} training tokens, {} validation tokens", train_data.token_count(), valid_data.token_count());
    let summary =
        train::run(&mut trainer, &train_data, Some(&valid_data), &RunOptions { out_dir: out, progress: true })?;

    let report = peerlm::eval::evaluate(&mut trainer.model, &valid_data, trainer.config.train.batch_size, 0, None);
    println!(
        "trained {} steps at {:.0} tokens/s; final training loss {:.4}",
        summary.steps, summary.tokens_per_second, summary.final_train_loss
    );
    println!("validation: {} tokens, loss {:.4}, perplexity {:.2}", report.tokens, report.loss, report.perplexity);
    for usage in &report.usage {
        println!(
            "block {}: expert usage {:.1}%, KL from uniform {:.3} nats (gate-weighted; selection counts {:.3})",
            usage.block,
            100.0 * usage.fraction_used,
            usage.kl_from_uniform,
            usage.selection_kl_from_uniform
        );
    }
    println!("checkpoint: {}", summary.checkpoint.display());
    if !args.sample_prompt.is_empty() {
        print_sample(&mut trainer.model, &tokenizer, &args.sample_prompt, 80, 0.8, Some(40), 0)?;
    }
    Ok(())
}

/// A resumed run goes on with the tokenizer it was trained with: the data's must be the same one.
fn check_same_tokenizer(
    trainer: &Trainer,
    checkpoint: &Path,
    tokenizer: &Tokenizer,
    tokenizer_path: &Path,
) -> Result<(), Box<dyn Error>> {
    let Some(text) = trainer.tokenizer() else { return Ok(()) };
    let (ours, theirs) = (fnv::hash(text.as_bytes()), tokenizer_file::hash(tokenizer));
    if ours != theirs {
        return Err(format!(
            "{} was trained with tokenizer {ours:016x}, but the data's {} is tokenizer {theirs:016x}: \
             resume on data encoded with the checkpoint's tokenizer (`peerlm prepare --from-checkpoint`)",
            checkpoint.display(),
            tokenizer_path.display()
        )
        .into());
    }
    Ok(())
}

/// The prepared directory for `data`: itself if it holds a tokenizer, else `<out>/data`, prepared from
/// the raw files in `data` on first use.
fn prepared_data(data: &Path, out: &Path, vocab: usize) -> Result<PathBuf, Box<dyn Error>> {
    if data.join("tokenizer.bpe").exists() {
        return Ok(data.to_path_buf());
    }
    let prepared = out.join("data");
    if prepared.join("tokenizer.bpe").exists() {
        return Ok(prepared);
    }
    let mut train_files = Vec::new();
    let mut valid_files = Vec::new();
    for file in peerlm::data::c4::list_input_files(&[data.to_path_buf()])? {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains("validation") {
            valid_files.push(file);
        } else {
            train_files.push(file);
        }
    }
    if train_files.is_empty() || valid_files.is_empty() {
        return Err(format!(
            "{}: neither a prepared directory (no tokenizer.bpe) nor raw C4 with train and *validation* files",
            data.display()
        )
        .into());
    }
    eprintln!("preparing {} into {} (vocabulary {vocab})", data.display(), prepared.display());
    prepare::run(&prepare::PrepareArgs::new(train_files, valid_files, prepared.clone(), vocab))?;
    Ok(prepared)
}
