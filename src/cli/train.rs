//! `peerlm train`: train a model from a config file, print its validation perplexity and a sample.
//!
//! `--data` takes either a directory written by `peerlm prepare` or raw C4 files (`*.json.gz`); raw data is
//! prepared once into `<out>/data` with the model's vocabulary size, so a newcomer needs one command.
//!
//! The output directory belongs to one run ([`RunDir`]): a second `train` into it is refused unless it
//! resumes the run (`--resume`) or replaces it (`--overwrite`). A resumed run keeps its model and its
//! learning-rate schedule from the checkpoint; `--extend-to` is the one way to change the schedule.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use peerlm::checkpoint::Checkpoint;
use peerlm::data::{fnv, tokenizer_file, TokenDataset, Tokenizer, TokenizerId};
use peerlm::model::{flops, memory as model_memory, ModelConfig};
use peerlm::run_dir::{Existing, RunDir};
use peerlm::train::{self, RunConfig, RunOptions, RunSummary, Trainer};

use super::{interrupt, memory, open_shards, prepare, print_sample, shard_paths};

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
    /// Continue the run in <out> from its checkpoint, exactly as if it had never stopped.
    #[arg(long)]
    resume: bool,
    /// Start a new run in an <out> that holds one; its checkpoint and metrics move to <out>/previous-<n>/.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Override the number of steps of a new run.
    #[arg(long, conflicts_with = "flops")]
    steps: Option<u64>,
    /// Set the number of steps of a new run from a training compute budget, e.g. 1e14.
    #[arg(long)]
    flops: Option<f64>,
    /// With --resume: train the run on to this many steps in all; the cosine schedule stretches from
    /// where the run is (not the same as a run planned this long from the start).
    #[arg(long, requires = "resume", conflicts_with_all = ["steps", "flops"])]
    extend_to: Option<u64>,
    /// Stop after this step with a checkpoint, to continue later with --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Build the model even if its estimated memory exceeds what is available.
    #[arg(long)]
    no_memory_check: bool,
    /// Prompt of the sample printed at the end ("" for none).
    #[arg(long, default_value = "The")]
    sample_prompt: String,
}

pub fn run(args: &TrainArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut config = RunConfig::load(&args.config)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.config.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    let planned = planned_steps(args, &config)?;
    let existing = match (args.resume, args.overwrite) {
        (true, _) => Existing::Resume,
        (false, true) => Existing::Overwrite,
        (false, false) => Existing::Refuse,
    };
    let run_dir = RunDir::open(&out, existing)?;
    if let Some(aside) = &run_dir.moved_to {
        eprintln!("--overwrite: the previous run's checkpoint and metrics are now in {}", aside.display());
    }
    for temp in &run_dir.swept {
        eprintln!("removed {}, left by a writer that was killed", temp.display());
    }
    let mut trainer = if args.resume {
        resume(args, &config, planned, &run_dir.checkpoint())?
    } else {
        config.train.steps = planned.unwrap_or(config.train.steps);
        let estimate = model_memory::training(&config.model, config.train.batch_size);
        memory::check(&format!("{}: training", args.config.display()), &estimate, args.no_memory_check)?;
        Trainer::new(config)?
    };
    if let Some(stop_at) = args.stop_at.filter(|&s| s <= trainer.step_count()) {
        return Err(format!("--stop-at {stop_at}: the run is already at step {}", trainer.step_count()).into());
    }
    let data = RunData::open(&args.data, &out, &trainer, &run_dir.checkpoint())?;
    trainer.set_tokenizer(tokenizer_file::to_text(&data.tokenizer));
    print_plan(&trainer, &data);
    if trainer.step_count() >= trainer.config.train.steps {
        eprintln!(
            "{} is finished (step {} of {}): nothing to train; to train it further, add --extend-to <steps>",
            run_dir.checkpoint().display(),
            trainer.step_count(),
            trainer.config.train.steps
        );
        return Ok(ExitCode::SUCCESS);
    }
    let options =
        RunOptions { out_dir: out.clone(), progress: true, stop: Some(interrupt::install()?), stop_at: args.stop_at };
    let summary = train::run(&mut trainer, &data.train, Some(&data.valid), &options)?;
    if summary.interrupted || summary.steps < trainer.config.train.steps {
        let why = if summary.interrupted { "interrupted" } else { "stopped (--stop-at)" };
        eprintln!(
            "{why} at step {} of {}: checkpoint {}; continue with `peerlm train --config {} --data {} --out {} --resume`",
            summary.steps,
            trainer.config.train.steps,
            summary.checkpoint.display(),
            args.config.display(),
            args.data.display(),
            out.display()
        );
        return Ok(if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS });
    }
    report(&mut trainer, &data, &summary, &args.sample_prompt)?;
    Ok(ExitCode::SUCCESS)
}

/// The steps `--steps` or `--flops` ask for, if either is given.
fn planned_steps(args: &TrainArgs, config: &RunConfig) -> Result<Option<u64>, Box<dyn Error>> {
    if args.steps == Some(0) {
        return Err("--steps 0: a run takes at least one step".into());
    }
    match args.flops {
        Some(budget) => Ok(Some(train::steps_for_flops(config, budget)?)),
        None => Ok(args.steps),
    }
}

/// The trainer of the run whose checkpoint is `path`; the config file must describe the same model, and
/// the schedule stays the run's unless `--extend-to` changes it.
fn resume(args: &TrainArgs, config: &RunConfig, planned: Option<u64>, path: &Path) -> Result<Trainer, Box<dyn Error>> {
    let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let checkpoint = Checkpoint::load(path)?;
    let stored = train::checkpoint_config(&checkpoint).map_err(|e| in_file(&e))?;
    let estimate = model_memory::training(&stored.model, stored.train.batch_size);
    memory::check(&format!("{}: training", path.display()), &estimate, args.no_memory_check)?;
    let mut trainer = Trainer::from_checkpoint(checkpoint).map_err(|e| in_file(&e))?;
    if trainer.config.model != config.model {
        return Err(in_file(&format_args!(
            "the run's model differs from the one {} describes; resume with the config the run started with",
            args.config.display()
        ))
        .into());
    }
    if let Some(steps) = planned.filter(|&s| s != trainer.config.train.steps) {
        return Err(in_file(&format_args!(
            "the run was planned for {} steps when it started, and its learning-rate schedule follows that \
             plan; resume without --steps/--flops to finish it exactly, or with --extend-to {steps} to train on",
            trainer.config.train.steps
        ))
        .into());
    }
    if let Some(steps) = args.extend_to {
        if steps <= trainer.step_count() {
            return Err(in_file(&format_args!(
                "--extend-to {steps}: the run is already at step {}",
                trainer.step_count()
            ))
            .into());
        }
        trainer.set_steps(steps)?;
    }
    eprintln!("resuming {} at step {} of {}", path.display(), trainer.step_count(), trainer.config.train.steps);
    Ok(trainer)
}

/// The tokenizer and token shards a run trains on, checked against its model.
struct RunData {
    tokenizer: Tokenizer,
    train: TokenDataset,
    valid: TokenDataset,
}

impl RunData {
    fn open(data: &Path, out: &Path, trainer: &Trainer, checkpoint: &Path) -> Result<RunData, Box<dyn Error>> {
        let model = &trainer.config.model;
        let dir = prepared_data(data, out, model.vocab_size)?;
        let tokenizer_path = dir.join("tokenizer.bpe");
        let tokenizer = tokenizer_file::load(&tokenizer_path)?;
        if tokenizer.vocab_size() != model.vocab_size {
            return Err(format!(
                "{}: the tokenizer has {} tokens but the run's model.vocab_size is {}",
                dir.display(),
                tokenizer.vocab_size(),
                model.vocab_size
            )
            .into());
        }
        check_same_tokenizer(trainer, checkpoint, &tokenizer, &tokenizer_path)?;
        let id = TokenizerId::of(&tokenizer, tokenizer_path.display().to_string());
        let train = open_split(&dir, "train", model, &id)?;
        let valid = open_split(&dir, "valid", model, &id)?;
        Ok(RunData { tokenizer, train, valid })
    }
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

/// The `<split>_*.bin` shards of `dir`, refused if another tokenizer wrote them or they hold token ids
/// past the model's vocabulary.
fn open_split(dir: &Path, split: &str, model: &ModelConfig, id: &TokenizerId) -> Result<TokenDataset, Box<dyn Error>> {
    let data = open_shards(dir, split, model.seq_len, id)?;
    if data.vocab_size() as usize > model.vocab_size {
        return Err(format!(
            "{}: the {split} shards hold token ids below {}, past the model's vocab_size {}",
            dir.display(),
            data.vocab_size(),
            model.vocab_size
        )
        .into());
    }
    Ok(data)
}

/// Model size, memory, compute and data, before the first step.
fn print_plan(trainer: &Trainer, data: &RunData) {
    let t = &trainer.config.train;
    let per_token = flops::train_flops_per_token(&trainer.config.model);
    let tokens_per_step = t.batch_size * trainer.config.model.seq_len;
    let estimate = model_memory::training(&trainer.config.model, t.batch_size);
    eprintln!(
        "model: {:.2}M parameters, {} to train; {:.3} MFLOP per training token; {} steps of {} tokens = {:.3e} FLOPs",
        trainer.model.num_params() as f64 / 1e6,
        memory::describe(&estimate),
        per_token / 1e6,
        t.steps,
        tokens_per_step,
        per_token * t.steps as f64 * tokens_per_step as f64
    );
    eprintln!("data: {} training tokens, {} validation tokens", data.train.token_count(), data.valid.token_count());
}

/// The end of a finished run: its validation perplexity, expert usage and a sample.
fn report(trainer: &mut Trainer, data: &RunData, summary: &RunSummary, prompt: &str) -> Result<(), Box<dyn Error>> {
    let report = peerlm::eval::evaluate(&mut trainer.model, &data.valid, trainer.config.train.batch_size, 0, None);
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
    if !prompt.is_empty() {
        print_sample(&mut trainer.model, &data.tokenizer, prompt, 80, 0.8, Some(40), 0)?;
    }
    Ok(())
}

/// The prepared directory for `data`: itself if it holds a tokenizer, else `<out>/data`, prepared from
/// the raw files in `data` on first use. Preparing goes into `<out>/data.partial`, renamed to `<out>/data`
/// only when complete, so an interrupted preparation is started again rather than half used.
fn prepared_data(data: &Path, out: &Path, vocab: usize) -> Result<PathBuf, Box<dyn Error>> {
    if data.join("tokenizer.bpe").exists() {
        return Ok(data.to_path_buf());
    }
    if shard_paths(data, "train").is_ok() {
        return Err(format!(
            "{}: holds token shards but no tokenizer.bpe (was it deleted or not copied?)",
            data.display()
        )
        .into());
    }
    let prepared = out.join("data");
    let complete = |dir: &Path| {
        dir.join("tokenizer.bpe").exists() && shard_paths(dir, "train").is_ok() && shard_paths(dir, "valid").is_ok()
    };
    if complete(&prepared) {
        return Ok(prepared);
    }
    let (train_files, valid_files) = raw_files(data)?;
    let partial = out.join("data.partial");
    // Left by an interrupted preparation (an incomplete `data` by a version that prepared in place); both
    // are this run's own, and the run directory is locked, so no one else is writing them.
    for leftover in [&partial, &prepared] {
        if leftover.exists() {
            eprintln!("removing {}, an interrupted preparation", leftover.display());
            std::fs::remove_dir_all(leftover).map_err(|e| format!("{}: {e}", leftover.display()))?;
        }
    }
    eprintln!("preparing {} into {} (vocabulary {vocab})", data.display(), prepared.display());
    prepare::run(&prepare::PrepareArgs::new(train_files, valid_files, partial.clone(), vocab))?;
    std::fs::rename(&partial, &prepared).map_err(|e| format!("{}: {e}", prepared.display()))?;
    Ok(prepared)
}

/// The raw C4 files of `data`, split into training files and held-out (`*validation*`) ones.
fn raw_files(data: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), Box<dyn Error>> {
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
    Ok((train_files, valid_files))
}
