//! Training: the loop that turns token shards into a model, with schedule, clipping, validation,
//! metrics and checkpoints that resume exactly.
//!
//! One step: draw the batch for this step (a pure function of seed and step, see
//! [`crate::data::loader`]), run the model forward on a recording tape, back-propagate, clip the global
//! gradient norm, and let AdamW update the parameters (lazily, row by row, for expert tables). Everything
//! a step depends on — weights, optimizer moments, batch-norm running statistics, the step number — goes
//! into a checkpoint, and every reduction in the engine has a fixed order, so a run stopped and resumed
//! ends with the same bits as one that never stopped.
//!
//! A step whose loss or gradient norm is not finite changes nothing and stops the run, so the last
//! checkpoint on disk is still the last good state.
//!
//! The learning-rate schedule belongs to the run: it is fixed by `train.steps` when the run starts and
//! travels in the checkpoint's config, so a run stopped ([`RunOptions::stop`], [`RunOptions::stop_at`])
//! and resumed takes the very steps of one that never stopped. Training a run past its planned end is a
//! different thing, [`Trainer::set_steps`]: it stretches the cosine from where the run is.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::data::atomic_file;
use crate::data::loader::{Batch, TokenDataset};
use crate::data::{fnv, tokenizer_file, Tokenizer};
use crate::error::Error;
use crate::model::{flops, memory, Gpt, ModelConfig};
use crate::nn::Module;
use crate::op_times::{OpTimes, Pass};
use crate::optim::{clip_factor, grad_norm, AdamW, AdamWConfig, CosineSchedule};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// How to train; a config file's `"train"` section. Every field has a default.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per step (default 8).
    pub batch_size: usize,
    /// Optimizer steps (default 1000); `--flops` overrides it from a compute budget.
    pub steps: u64,
    /// Peak learning rate of dense parameters (default 1e-3).
    pub lr: f32,
    /// Peak learning rate of expert and value tables (default 1e-3).
    pub table_lr: f32,
    /// Decoupled weight decay of matrices (default 0.1).
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Linear warmup steps before the cosine decay (default 50).
    pub warmup_steps: u64,
    /// The cosine decays to this fraction of the peak rate (default 0.1).
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip; 0 turns it off (default 1.0).
    pub grad_clip: f64,
    /// Validate every this many steps, and at the end; 0: only at the end (default 100).
    pub eval_every: u64,
    /// Validation batches per evaluation; 0 means the whole validation set (default 20).
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps, and at the end; 0: only at the end (default 500).
    pub checkpoint_every: u64,
    /// Seeds initialisation and batch order (default 1337).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 8,
            steps: 1000,
            lr: 1e-3,
            table_lr: 1e-3,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            checkpoint_every: 500,
            seed: 1337,
        }
    }
}

/// A whole config file: `{"model": {...}, "train": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads and validates a JSON config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
        let in_file = |e: String| Error::Train(format!("{}: {e}", path.display()));
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| in_file(e.to_string()))?;
        check_section_widths(&value).map_err(in_file)?;
        let mut config: RunConfig = serde_json::from_value(value).map_err(|e| in_file(e.to_string()))?;
        config.model.propagate_d_model();
        config.validate().map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.model.validate().map_err(|e| Error::Invalid(format!("model.{e}")))?;
        let t = &self.train;
        if t.batch_size == 0 {
            return Err(Error::Invalid("train.batch_size: must be at least 1".into()));
        }
        if t.steps == 0 {
            return Err(Error::Invalid("train.steps: must be at least 1".into()));
        }
        for (field, value) in [("lr", t.lr), ("table_lr", t.table_lr)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::Invalid(format!(
                    "train.{field}: {value} is not a positive number (as a 32-bit float)"
                )));
            }
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(Error::Invalid(format!("train.weight_decay: {} is not a non-negative number", t.weight_decay)));
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return Err(Error::Invalid("train.beta1 / train.beta2: must lie in [0, 1)".into()));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(Error::Invalid("train.min_lr_ratio: must lie in [0, 1]".into()));
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            return Err(Error::Invalid(format!(
                "train.grad_clip: {} is not a non-negative number (0 turns clipping off)",
                t.grad_clip
            )));
        }
        Ok(())
    }
}

/// Refuses a layer section whose `d_model` differs from the model's: the model's width is the one used, so
/// a different one in a section would be silently ignored.
fn check_section_widths(file: &serde_json::Value) -> Result<(), String> {
    let model = &file["model"];
    let width = model.get("d_model").cloned().unwrap_or_else(|| ModelConfig::default().d_model.into());
    for section in ["dense", "moe", "pkm", "peer"] {
        if let Some(given) = model.get(section).and_then(|s| s.get("d_model")) {
            if *given != width {
                return Err(format!(
                    "model.{section}.d_model: {given} differs from model.d_model = {width} (leave it out: the model's is used)"
                ));
            }
        }
    }
    Ok(())
}

/// What one optimizer step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The model, its optimizer and the step counter: everything a checkpoint holds.
pub struct Trainer {
    pub config: RunConfig,
    pub model: Gpt<f32>,
    optimizer: AdamW,
    schedule: CosineSchedule,
    tape: Tape<f32>,
    step: u64,
    /// The tokenizer file's text, kept in checkpoints so that `eval` and `sample` need nothing else.
    tokenizer: Option<String>,
}

impl Trainer {
    pub fn new(config: RunConfig) -> Result<Self, Error> {
        config.validate()?;
        let t = &config.train;
        let optimizer = AdamW::new(AdamWConfig {
            lr: t.lr,
            beta1: t.beta1,
            beta2: t.beta2,
            eps: 1e-8,
            weight_decay: t.weight_decay,
            table_lr: t.table_lr,
        });
        let warmup = t.warmup_steps.min(t.steps);
        let schedule = CosineSchedule::new(warmup, t.steps, t.min_lr_ratio)?;
        let model = Gpt::new(&config.model, t.seed);
        Ok(Trainer { config, model, optimizer, schedule, tape: Tape::new(), step: 0, tokenizer: None })
    }

    /// Changes the planned number of steps; the learning-rate schedule stretches to match, so the steps
    /// from here on differ from those of a run planned this long from its start.
    pub fn set_steps(&mut self, steps: u64) -> Result<(), Error> {
        let t = &mut self.config.train;
        t.steps = steps;
        self.schedule = CosineSchedule::new(t.warmup_steps.min(steps), steps, t.min_lr_ratio)?;
        Ok(())
    }

    /// Records the tokenizer (its file's text) to store in checkpoints.
    pub fn set_tokenizer(&mut self, text: String) {
        self.tokenizer = Some(text);
    }

    /// The tokenizer file's text recorded for checkpoints, if any.
    pub fn tokenizer(&self) -> Option<&str> {
        self.tokenizer.as_deref()
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Times every op of the following steps, and the gradient norm and optimizer update: see
    /// [`crate::op_times`].
    pub fn time_ops(&mut self) {
        self.tape.time_ops();
    }

    /// The times summed since [`Trainer::time_ops`], if it was called.
    pub fn op_times(&self) -> Option<&OpTimes> {
        self.tape.op_times()
    }

    /// One optimizer step on `batch`. If the loss or the gradient norm is not finite (a finite loss can
    /// still overflow in the backward), it fails and leaves the weights, batch-norm running statistics,
    /// optimizer state and step count as they were.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, Error> {
        // The training forward updates batch-norm running statistics before we know whether the step
        // is good, so keep a copy to put back (a few KB: one mean and variance per query feature).
        let running_stats = self.model.buffers();
        self.tape.clear();
        let (loss, ce) = self.model.loss(&mut self.tape, &batch.inputs, &batch.targets, batch.batch_size, true);
        if !ce.is_finite() || !loss.value().item().is_finite() {
            return Err(self.undo_step(running_stats, format!("the loss is {ce}")));
        }
        self.tape.backward(&loss);
        drop(loss);
        let start = Instant::now();
        let grad_norm = grad_norm(&self.model.params(), &mut self.tape);
        self.tape.add_time(Pass::Update, "grad norm", start);
        if !grad_norm.is_finite() {
            return Err(self.undo_step(running_stats, format!("the gradient norm is {grad_norm}")));
        }
        let max_norm = if self.config.train.grad_clip > 0.0 { self.config.train.grad_clip } else { f64::INFINITY };
        let lr_scale = self.schedule.lr_scale(self.step);
        let start = Instant::now();
        self.optimizer.step(&mut self.model.params_mut(), &self.tape, lr_scale, clip_factor(grad_norm, max_norm));
        self.tape.add_time(Pass::Update, "optimizer", start);
        self.tape.clear();
        self.step += 1;
        Ok(StepStats { loss: ce, grad_norm, lr: f64::from(self.config.train.lr * lr_scale) })
    }

    /// Puts back the running statistics a failed step's forward changed, and says why it failed.
    fn undo_step(&mut self, running_stats: Vec<(String, Tensor<f32>)>, why: String) -> Error {
        self.tape.clear();
        let mut saved: BTreeMap<_, _> = running_stats.into_iter().collect();
        self.model.load_buffers(&mut saved).expect("the buffers were taken from this model");
        Error::Train(format!("step {}: {why}; stopping", self.step + 1))
    }

    /// Mean cross-entropy (nats per token) over up to `max_batches` validation batches (0: all).
    pub fn validate(&mut self, valid: &TokenDataset, max_batches: usize) -> f64 {
        let batches = valid.valid_batches(self.config.train.batch_size);
        let limit = if max_batches == 0 { usize::MAX } else { max_batches };
        let (mut total, mut count) = (0.0, 0usize);
        for batch in batches.take(limit) {
            let mut tape = Tape::no_grad();
            let (_, ce) = self.model.loss(&mut tape, &batch.inputs, &batch.targets, batch.batch_size, false);
            total += ce * batch.targets.len() as f64;
            count += batch.targets.len();
        }
        total / count.max(1) as f64
    }

    /// Everything needed to continue exactly: weights, optimizer moments, running statistics, step.
    pub fn to_checkpoint(&self) -> Checkpoint {
        let mut tensors: Vec<(String, Tensor<f32>)> =
            self.model.params().iter().map(|p| (p.name.clone(), p.value.clone())).collect();
        tensors.extend(self.model.buffers());
        tensors.extend(self.optimizer.state_tensors());
        let mut metadata = BTreeMap::new();
        metadata.insert("format".into(), "peerlm-checkpoint-v1".into());
        metadata.insert("step".into(), self.step.to_string());
        metadata.insert("optimizer_step".into(), self.optimizer.step_count().to_string());
        metadata.insert("config".into(), serde_json::to_string(&self.config).expect("config serialises"));
        if let Some(tokenizer) = &self.tokenizer {
            metadata.insert("tokenizer".into(), tokenizer.clone());
            metadata.insert("tokenizer_hash".into(), format!("{:016x}", fnv::hash(tokenizer.as_bytes())));
        }
        Checkpoint { tensors, metadata }
    }

    /// Rebuilds a trainer from a checkpoint written by [`Trainer::to_checkpoint`].
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Result<Self, Error> {
        let restored = Restored::new(checkpoint)?;
        let optimizer_step: u64 = restored.meta("optimizer_step")?.parse().map_err(|e| bad("optimizer_step", e))?;
        let mut trainer = Trainer::new(restored.config.clone())?;
        let mut tensors = restored.tensors;
        load_weights(&mut trainer.model, &mut tensors)?;
        let optimizer_state: Vec<(String, Tensor<f32>)> = tensors.into_iter().collect();
        trainer
            .optimizer
            .load_state(optimizer_step, &optimizer_state, &trainer.model.params())
            .map_err(|e| Error::Train(format!("checkpoint: optimizer state: {e}")))?;
        trainer.step = restored.step;
        trainer.tokenizer = restored.metadata.get("tokenizer").cloned();
        Ok(trainer)
    }
}

/// A checkpoint's string metadata (step, config, tokenizer).
pub type Metadata = BTreeMap<String, String>;

/// The model, config and metadata of a checkpoint, without the optimizer state (for `eval`, `sample`).
pub fn load_model(checkpoint: Checkpoint) -> Result<(Gpt<f32>, RunConfig, Metadata), Error> {
    let mut restored = Restored::new(checkpoint)?;
    let mut model = Gpt::new(&restored.config.model, restored.config.train.seed);
    load_weights(&mut model, &mut restored.tensors)?;
    Ok((model, restored.config, restored.metadata))
}

/// The model, config and tokenizer of the checkpoint at `path`, for scoring or sampling; errors name the file.
pub fn load_model_and_tokenizer(path: &Path) -> Result<(Gpt<f32>, RunConfig, Tokenizer), Error> {
    let in_file = |e: &dyn fmt::Display| Error::Train(format!("{}: {e}", path.display()));
    let checkpoint = Checkpoint::load(path)?;
    let (model, config, metadata) = load_model(checkpoint).map_err(|e| in_file(&e))?;
    let text = metadata.get("tokenizer").ok_or_else(|| in_file(&"the checkpoint holds no tokenizer"))?;
    let tokenizer = tokenizer_file::parse(text.as_bytes(), &format!("{} (tokenizer)", path.display()))?;
    if tokenizer.vocab_size() != config.model.vocab_size {
        return Err(in_file(&format!(
            "the tokenizer has {} tokens but model.vocab_size is {}",
            tokenizer.vocab_size(),
            config.model.vocab_size
        )));
    }
    Ok((model, config, tokenizer))
}

/// A checkpoint's parts, checked and parsed.
struct Restored {
    config: RunConfig,
    step: u64,
    metadata: BTreeMap<String, String>,
    tensors: BTreeMap<String, Tensor<f32>>,
}

impl Restored {
    fn new(checkpoint: Checkpoint) -> Result<Self, Error> {
        let mut restored = Restored {
            config: RunConfig::default(),
            step: 0,
            metadata: checkpoint.metadata,
            tensors: checkpoint.tensors.into_iter().collect(),
        };
        if restored.meta("format")? != "peerlm-checkpoint-v1" {
            return Err(Error::Train(format!("checkpoint: unknown format {:?}", restored.meta("format")?)));
        }
        restored.config = config_of(&restored.metadata)?;
        // Refuse a config that asks for more parameters than the file holds before building the model:
        // a corrupt or crafted config could otherwise ask for any amount of memory.
        let params = memory::param_count(&restored.config.model);
        let stored: f64 = restored.tensors.values().map(|t| t.numel() as f64).sum();
        if params > stored {
            return Err(Error::Train(format!(
                "checkpoint: its config describes {params:.0} parameters, but the file holds only {stored:.0} values"
            )));
        }
        restored.step = restored.meta("step")?.parse().map_err(|e| bad("step", e))?;
        restored.check_tokenizer_hash()?;
        Ok(restored)
    }

    /// The tokenizer must be the one whose hash was recorded beside it (checkpoints written before the hash
    /// existed have none, and pass).
    fn check_tokenizer_hash(&self) -> Result<(), Error> {
        let (Some(text), Some(recorded)) = (self.metadata.get("tokenizer"), self.metadata.get("tokenizer_hash")) else {
            return Ok(());
        };
        let actual = format!("{:016x}", fnv::hash(text.as_bytes()));
        if &actual != recorded {
            return Err(Error::Train(format!(
                "checkpoint: its tokenizer hashes to {actual}, but its metadata \"tokenizer_hash\" records {recorded} \
                 (the tokenizer was replaced after training)"
            )));
        }
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<&str, Error> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::Train(format!("checkpoint: metadata has no \"{key}\"")))
    }
}

/// The run config stored in a checkpoint, validated (to size a model before building it).
pub fn checkpoint_config(checkpoint: &Checkpoint) -> Result<RunConfig, Error> {
    config_of(&checkpoint.metadata)
}

fn config_of(metadata: &Metadata) -> Result<RunConfig, Error> {
    let text = metadata.get("config").ok_or_else(|| Error::Train("checkpoint: metadata has no \"config\"".into()))?;
    let config: RunConfig = serde_json::from_str(text).map_err(|e| bad("config", e))?;
    config.validate().map_err(|e| Error::Train(format!("checkpoint: config: {e}")))?;
    Ok(config)
}

fn bad(key: &str, error: impl fmt::Display) -> Error {
    Error::Train(format!("checkpoint: metadata \"{key}\": {error}"))
}

/// Moves the model's weights and running statistics out of `tensors` into `model`.
fn load_weights(model: &mut Gpt<f32>, tensors: &mut BTreeMap<String, Tensor<f32>>) -> Result<(), Error> {
    for param in model.params_mut() {
        let value = tensors
            .remove(&param.name)
            .ok_or_else(|| Error::Train(format!("checkpoint: no tensor for parameter {}", param.name)))?;
        if value.shape() != param.value.shape() {
            return Err(Error::Train(format!(
                "checkpoint: {} has shape {:?}, the model expects {:?}",
                param.name,
                value.shape(),
                param.value.shape()
            )));
        }
        param.value = value;
    }
    model.load_buffers(tensors).map_err(|e| Error::Train(format!("checkpoint: {e}")))
}

/// Where a run writes, what it prints, and when it stops early.
pub struct RunOptions {
    pub out_dir: PathBuf,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// Checked before every step: once it is set (by a SIGINT handler, say), the run writes a checkpoint
    /// and returns with [`RunSummary::interrupted`] set.
    pub stop: Option<&'static AtomicBool>,
    /// Stop after this step (counted from the start of the run) with a checkpoint, as if interrupted
    /// there; the run's schedule is unchanged, so resuming it goes on exactly.
    pub stop_at: Option<u64>,
}

impl RunOptions {
    /// Writes into `out_dir`, prints nothing, and runs to the planned end.
    pub fn new(out_dir: &Path) -> Self {
        RunOptions { out_dir: out_dir.to_path_buf(), progress: false, stop: None, stop_at: None }
    }
}

/// Result of a finished run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub steps: u64,
    /// The loss of the last step: of this process, or of the step it resumed at (read back from
    /// `metrics.jsonl`); NaN if no step was ever taken.
    pub final_train_loss: f64,
    pub final_valid_loss: Option<f64>,
    /// Training throughput of this process (0 if it took no step).
    pub tokens_per_second: f64,
    /// Wall-clock seconds of the training loop since step 0 (steps, checkpoints, periodic validation), over
    /// every process that trained the run (read back from `metrics.jsonl` on resume; lines written before
    /// the field existed count as 0).
    pub train_seconds: f64,
    pub checkpoint: PathBuf,
    /// The run stopped because [`RunOptions::stop`] was set.
    pub interrupted: bool,
}

/// Trains `trainer` up to its configured step count (or [`RunOptions::stop_at`]), validating on `valid`,
/// writing `metrics.jsonl` and `checkpoint.safetensors` into the output directory. Lines of
/// `metrics.jsonl` past the trainer's step (written after the checkpoint it resumes from) are dropped
/// first, so every step appears once.
pub fn run(
    trainer: &mut Trainer,
    train: &TokenDataset,
    valid: Option<&TokenDataset>,
    options: &RunOptions,
) -> Result<RunSummary, Error> {
    let io_err = |what: &str, e: std::io::Error| Error::Train(format!("{what}: {e}"));
    std::fs::create_dir_all(&options.out_dir).map_err(|e| io_err(&options.out_dir.display().to_string(), e))?;
    let metrics_path = options.out_dir.join("metrics.jsonl");
    let checkpoint_path = options.out_dir.join("checkpoint.safetensors");
    let resumed = trim_metrics(&metrics_path, trainer.step_count())?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io_err(&metrics_path.display().to_string(), e))?;
    let t = trainer.config.train.clone();
    let tokens_per_step = t.batch_size * trainer.config.model.seq_len;
    let started = Instant::now();
    let first_step = trainer.step_count();
    let mut last = StepStats { loss: resumed.loss, grad_norm: 0.0, lr: 0.0 };
    let mut valid_loss = None;
    let tty = std::io::stderr().is_terminal();
    let end = options.stop_at.map_or(t.steps, |stop_at| stop_at.min(t.steps));
    let mut interrupted = false;

    while trainer.step_count() < end {
        if options.stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            trainer.to_checkpoint().save(&checkpoint_path)?;
            interrupted = true;
            break;
        }
        let batch = train.train_batch(t.seed, trainer.step_count(), t.batch_size);
        last = trainer.train_step(&batch).map_err(|e| Error::Train(format!("{e}; {}", last_good(&checkpoint_path))))?;
        let step = trainer.step_count();
        let elapsed = started.elapsed().as_secs_f64();
        let tokens_per_second = ((step - first_step) as usize * tokens_per_step) as f64 / elapsed.max(1e-9);
        let line = format!(
            "{{\"step\":{step},\"loss\":{},\"grad_norm\":{},\"lr\":{:.3e},\"tokens_per_s\":{},\"seconds\":{}}}",
            json_number(last.loss, 5),
            json_number(last.grad_norm, 4),
            // Finite: validation refuses a learning rate that is not, and the schedule scales it by at most 1.
            last.lr,
            json_number(tokens_per_second, 0),
            json_number(resumed.seconds + elapsed, 3)
        );
        writeln!(metrics, "{line}").map_err(|e| io_err("metrics.jsonl", e))?;
        let done = step == t.steps;
        if let Some(valid) = valid.filter(|_| done || (t.eval_every > 0 && step % t.eval_every == 0)) {
            let loss = trainer.validate(valid, t.eval_batches);
            valid_loss = Some(loss);
            let line = format!(
                "{{\"step\":{step},\"valid_loss\":{},\"valid_ppl\":{}}}",
                json_number(loss, 5),
                json_number(loss.exp(), 3)
            );
            writeln!(metrics, "{line}").map_err(|e| io_err("metrics.jsonl", e))?;
            if options.progress {
                eprintln!("{}step {step}: validation loss {loss:.4}, perplexity {:.2}", clear(tty), loss.exp());
            }
        }
        if step == end || (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) {
            trainer.to_checkpoint().save(&checkpoint_path)?;
        }
        if options.progress {
            let eta = (t.steps - step) as f64 * elapsed / (step - first_step) as f64;
            progress_line(tty, step, t.steps, &last, tokens_per_second, eta);
        }
    }
    if options.progress && tty {
        eprintln!();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let steps_here = trainer.step_count() - first_step;
    Ok(RunSummary {
        steps: trainer.step_count(),
        final_train_loss: last.loss,
        final_valid_loss: valid_loss,
        tokens_per_second: if steps_here == 0 { 0.0 } else { (steps_here as usize * tokens_per_step) as f64 / elapsed },
        train_seconds: resumed.seconds + if steps_here == 0 { 0.0 } else { elapsed },
        checkpoint: checkpoint_path,
        interrupted,
    })
}

/// `x` with `digits` decimals, or `null` when it is not finite (JSON has no NaN or infinity).
fn json_number(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "null".into()
    }
}

/// Where a failed run can be picked up again: its checkpoint if it wrote one (a failed step changes
/// nothing, so the file on disk is still good).
fn last_good(checkpoint: &Path) -> String {
    if checkpoint.exists() {
        format!("the last good checkpoint is {}", checkpoint.display())
    } else {
        "no checkpoint was written yet".into()
    }
}

/// What `metrics.jsonl` says of the step a run resumes at: its training loss and the training seconds
/// spent up to it (NaN and 0 for a fresh run).
struct ResumedStep {
    loss: f64,
    seconds: f64,
}

/// Drops the lines of `metrics.jsonl` for steps after `step` (and a line torn by a kill), atomically, and
/// reads back the training line of `step` itself.
fn trim_metrics(path: &Path, step: u64) -> Result<ResumedStep, Error> {
    let mut resumed = ResumedStep { loss: f64::NAN, seconds: 0.0 };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(resumed),
        Err(e) => return Err(Error::Train(format!("{}: {e}", path.display()))),
    };
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(line_step) = value.get("step").and_then(serde_json::Value::as_u64).filter(|&s| s <= step) else {
            continue;
        };
        kept.push_str(line);
        if line_step == step {
            if let Some(loss) = value.get("loss").and_then(serde_json::Value::as_f64) {
                resumed.loss = loss;
                resumed.seconds = value.get("seconds").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            }
        }
    }
    if kept.len() != text.len() {
        atomic_file::write(path, kept.as_bytes())?;
    }
    Ok(resumed)
}

/// The steps a compute budget buys for this config (see [`flops`]); an error for a budget that is not a
/// positive number or buys no whole step.
pub fn steps_for_flops(config: &RunConfig, budget: f64) -> Result<u64, Error> {
    flops::steps_for_budget(&config.model, budget, config.train.batch_size * config.model.seq_len)
}

fn clear(tty: bool) -> &'static str {
    if tty {
        "\r\x1b[2K"
    } else {
        ""
    }
}

/// On a terminal, one line rewritten in place; in a log, a line every 10 steps.
fn progress_line(tty: bool, step: u64, steps: u64, stats: &StepStats, tokens_per_second: f64, eta: f64) {
    if !tty && step % 10 != 0 && step != steps {
        return;
    }
    let line = format!(
        "step {step}/{steps} | loss {:.4} | lr {:.2e} | {:.0} tok/s | ETA {:.0}s",
        stats.loss, stats.lr, tokens_per_second, eta
    );
    if tty {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}
