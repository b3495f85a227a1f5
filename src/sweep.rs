//! Sweeps: a grid of training runs, each in its own directory, resumable, and summarised in a small JSON
//! file that a report is made from. This is how the paper's isoFLOP comparison (He 2024, §3.1, Figure 1)
//! and its ablations (§3.2, Figure 3, Table 2) are run here.
//!
//! A spec (JSON) names a base run config and one or more grids. A grid has axes, each a list of named
//! patches, a list of training budgets in FLOPs and a list of seeds; its runs are every combination of
//! one patch per axis, one budget and one seed. A run's config is the base with its patches merged in
//! (JSON merge patch, RFC 7386: objects merge key by key, anything else replaces), its seed set, and its
//! steps bought by its budget ([`flops::steps_for_budget`]):
//!
//! ```json
//! {"base": {"model": {...}, "train": {...}},
//!  "grids": [{"name": "isoflop",
//!             "axes": [{"name": "method", "values": [{"name": "dense", "patch": {"model": {"ffw": "dense"}}}, ...]},
//!                      {"name": "size", "values": [{"name": "d128", "patch": {"model": {"d_model": 128}}}, ...]}],
//!             "budgets": [1e12, 3e12], "seeds": [1337]}]}
//! ```
//!
//! Run `peer-d128` of grid `isoflop` at 1e12 FLOPs and seed 1337 lives in `<out>/isoflop/peer-d128-1e12-s1337/`:
//! `config.json` (the resolved config, written first), `checkpoint.safetensors`, `metrics.jsonl`, and at
//! the end `summary.json` ([`RunSummaryFile`]). A run with a summary is finished and skipped; one with a
//! checkpoint continues from it exactly; a directory whose config differs from the spec's is refused, so
//! an edited spec never mixes two configs under one name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::data::atomic_file;
use crate::data::{TokenDataset, Tokenizer};
use crate::error::Error;
use crate::eval::text::{self, Protocol};
use crate::eval::{self, lambada};
use crate::model::{flops, Gpt};
use crate::run_dir::{Existing, RunDir};
use crate::train::{self, RunConfig, RunOptions, Trainer};

/// A sweep file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The text the runs train on and are validated with; `peerlm sweep --data` can replace it.
    #[serde(default)]
    pub data: Option<DataSpec>,
    /// Held-out sets, scored after training; the first one's expert usage is reported.
    #[serde(default)]
    pub eval: Vec<EvalSet>,
    /// A run config (or the part of one that differs from the defaults).
    pub base: Value,
    pub grids: Vec<GridSpec>,
}

/// A held-out set of documents every run is scored on: C4-style JSON lines (`text` field) or a plain
/// text file (one document).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    /// The name in summaries and reports, e.g. `c4`, `wikitext`, `lambada`.
    pub name: String,
    pub path: PathBuf,
    /// Also score each document's last word as LAMBADA does (accuracy of greedy decoding).
    #[serde(default)]
    pub lambada: bool,
}

/// Raw C4-style files (`*.json.gz`, `*.jsonl`), paths relative to the working directory. They are
/// tokenized once, with a BPE of the base config's vocabulary trained on `train`, into `<out>/data`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub train: Vec<PathBuf>,
    /// Held out: the validation split every run is scored on.
    pub valid: Vec<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    pub name: String,
    pub axes: Vec<Axis>,
    /// Training FLOPs of each run.
    pub budgets: Vec<f64>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
}

fn default_seeds() -> Vec<u64> {
    vec![1337]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub name: String,
    pub values: Vec<AxisValue>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AxisValue {
    pub name: String,
    /// Merged into the base config; none changes nothing.
    #[serde(default = "empty_patch")]
    pub patch: Value,
}

fn empty_patch() -> Value {
    Value::Object(serde_json::Map::new())
}

/// One run of a grid, fully resolved.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub grid: String,
    /// Unique within its grid: the axis values, the budget and the seed, e.g. `peer-d128-1e12-s1337`.
    pub name: String,
    /// `(axis name, value name)` in axis order.
    pub labels: Vec<(String, String)>,
    pub budget: f64,
    pub seed: u64,
    pub config: RunConfig,
}

impl PlannedRun {
    /// `grid/name`, how runs are named on the command line.
    pub fn id(&self) -> String {
        format!("{}/{}", self.grid, self.name)
    }

    /// The run's directory under the sweep's output directory.
    pub fn dir(&self, out: &Path) -> PathBuf {
        out.join(&self.grid).join(&self.name)
    }

    /// Training FLOPs the run will spend: its steps times the FLOPs of a step.
    pub fn train_flops(&self) -> f64 {
        let tokens = self.config.train.steps as f64 * self.tokens_per_step() as f64;
        flops::train_flops_per_token(&self.config.model) * tokens
    }

    pub fn tokens_per_step(&self) -> usize {
        self.config.train.batch_size * self.config.model.seq_len
    }
}

impl SweepSpec {
    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Train(format!("{}: {e}", path.display())))
    }

    /// Every run of every grid, in grid order, then axis order (the last axis varying fastest), then
    /// budget, then seed. Fails, naming the run, if a config is invalid or two runs share a name.
    pub fn plan(&self) -> Result<Vec<PlannedRun>, Error> {
        let mut runs = Vec::new();
        for grid in &self.grids {
            if grid.budgets.is_empty() || grid.seeds.is_empty() {
                return Err(Error::Train(format!("grid {}: needs at least one budget and one seed", grid.name)));
            }
            for choice in combinations(&grid.axes) {
                for &budget in &grid.budgets {
                    for &seed in &grid.seeds {
                        runs.push(self.resolve(grid, &choice, budget, seed)?);
                    }
                }
            }
        }
        let mut seen = BTreeMap::new();
        for run in &runs {
            if seen.insert(run.id(), ()).is_some() {
                return Err(Error::Train(format!("run {}: two runs of the spec have this name", run.id())));
            }
        }
        Ok(runs)
    }

    fn resolve(&self, grid: &GridSpec, choice: &[&AxisValue], budget: f64, seed: u64) -> Result<PlannedRun, Error> {
        let labels: Vec<(String, String)> =
            grid.axes.iter().zip(choice).map(|(axis, value)| (axis.name.clone(), value.name.clone())).collect();
        let mut parts: Vec<String> = choice.iter().map(|v| v.name.clone()).collect();
        parts.push(format!("{budget:e}"));
        parts.push(format!("s{seed}"));
        let name = parts.join("-");
        let id = format!("{}/{name}", grid.name);
        if !(budget.is_finite() && budget > 0.0) {
            return Err(Error::Train(format!("run {id}: budget {budget} is not a positive number of FLOPs")));
        }
        let mut value = serde_json::to_value(RunConfig::default()).expect("a config serialises");
        merge_patch(&mut value, &self.base);
        for axis_value in choice {
            merge_patch(&mut value, &axis_value.patch);
        }
        let mut config: RunConfig =
            serde_json::from_value(value).map_err(|e| Error::Train(format!("run {id}: config: {e}")))?;
        config.model.propagate_d_model();
        config.train.seed = seed;
        config.validate().map_err(|e| Error::Train(format!("run {id}: {e}")))?;
        let tokens_per_step = config.train.batch_size * config.model.seq_len;
        config.train.steps = flops::steps_for_budget(&config.model, budget, tokens_per_step)
            .map_err(|e| Error::Train(format!("run {id}: {e}")))?;
        config.train.warmup_steps = config.train.warmup_steps.min(config.train.steps);
        Ok(PlannedRun { grid: grid.name.clone(), name, labels, budget, seed, config })
    }
}

/// Every way of picking one value from each axis, the last axis varying fastest.
fn combinations(axes: &[Axis]) -> Vec<Vec<&AxisValue>> {
    axes.iter().fold(vec![Vec::new()], |partial, axis| {
        partial
            .into_iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push(value);
                    next
                })
            })
            .collect()
    })
}

/// JSON merge patch (RFC 7386): an object patch merges key by key (a `null` removes the key), anything
/// else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let fields = target.as_object_mut().expect("made an object above");
    for (key, change) in changes {
        if change.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

/// Held-out figures of one evaluation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetScore {
    /// How it was scored ([`Protocol::describe`]).
    pub protocol: String,
    #[serde(default)]
    pub documents: Option<usize>,
    /// Tokens scored, and the UTF-8 bytes of the text they encode.
    pub tokens: usize,
    #[serde(default)]
    pub bytes: Option<usize>,
    /// Mean cross-entropy, nats per token.
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: Option<f64>,
    /// LAMBADA only: the share of passages whose last word greedy decoding gets right.
    #[serde(default)]
    pub last_word_accuracy: Option<f64>,
}

/// Expert usage of one retrieval layer (He 2024, §3.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageScore {
    pub block: usize,
    pub fraction_used: f64,
    /// KL(gate-weighted usage ‖ uniform), the paper's figure.
    pub kl_from_uniform: f64,
    /// KL(selection counts ‖ uniform).
    pub selection_kl_from_uniform: f64,
}

/// What a finished run leaves in `summary.json`: everything a report needs, small enough to commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummaryFile {
    pub grid: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub budget: f64,
    pub seed: u64,
    pub steps: u64,
    pub tokens_per_step: usize,
    /// Training FLOPs per token and in all (steps × tokens per step × per token).
    pub flops_per_token: f64,
    pub train_flops: f64,
    /// Parameters of the whole model (the x axis of the paper's Figure 1).
    pub params: usize,
    /// Tokens of the training set, and how many passes over it the run made.
    pub train_set_tokens: u64,
    pub epochs: f64,
    /// Loss of the last step (none if it is not on record).
    pub final_train_loss: Option<f64>,
    /// Wall-clock seconds of the training loop (steps, checkpoints, periodic validation) over every sitting
    /// of the run, and its throughput (steps written by a peerlm that did not record their time count as 0).
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    /// Held-out sets by name (`c4` is the C4 validation split).
    pub eval: BTreeMap<String, SetScore>,
    pub usage: Vec<UsageScore>,
    /// The machine and day it ran on.
    pub machine: String,
    pub date: String,
    pub config: RunConfig,
}

impl RunSummaryFile {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Train(format!("{}: {e}", path.display())))
    }

    /// Writes the summary atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("a summary serialises");
        atomic_file::write(path, text.as_bytes())
    }
}

/// Where a run stands on disk.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// Nothing written yet.
    New,
    /// Started: continue from the checkpoint, if there is one.
    Started,
    Finished(Box<RunSummaryFile>),
}

/// Reads the state of `run` under `out`, refusing a directory that holds another config.
pub fn run_state(run: &PlannedRun, out: &Path) -> Result<RunState, Error> {
    let dir = run.dir(out);
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Ok(RunState::New);
    }
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::Train(format!("{}: {e}", config_path.display())))?;
    let on_disk: RunConfig =
        serde_json::from_str(&text).map_err(|e| Error::Train(format!("{}: {e}", config_path.display())))?;
    if on_disk != run.config {
        return Err(Error::Train(format!(
            "{}: holds another config than the spec gives for run {} (was the spec edited? move the directory \
             away to rerun it)",
            config_path.display(),
            run.id()
        )));
    }
    let summary = dir.join("summary.json");
    if summary.exists() {
        return Ok(RunState::Finished(Box::new(RunSummaryFile::load(&summary)?)));
    }
    Ok(RunState::Started)
}

/// Creates the run's directory and writes its `config.json`.
pub fn start_run(run: &PlannedRun, out: &Path) -> Result<PathBuf, Error> {
    let dir = run.dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Train(format!("{}: {e}", dir.display())))?;
    let text = serde_json::to_string_pretty(&run.config).expect("a config serialises");
    atomic_file::write(&dir.join("config.json"), text.as_bytes())?;
    Ok(dir)
}

/// What every run of a sweep trains and is scored on.
pub struct SweepData<'a> {
    pub train: &'a TokenDataset,
    /// Validation shards, for the loss `metrics.jsonl` records at the end of training.
    pub valid: &'a TokenDataset,
    pub tokenizer: &'a Tokenizer,
    /// The tokenizer file's text, kept in checkpoints.
    pub tokenizer_text: &'a str,
    /// The held-out sets every run is scored on, with their documents; the first one's expert usage is
    /// the run's (the C4 validation split, in the study).
    pub eval_sets: &'a [(EvalSet, Vec<String>)],
}

/// Trains `run` under `out` (from its checkpoint if it was started), scores it on every held-out set and
/// writes its summary. A finished run is not trained again; if its summary lacks a set, or scored it
/// under another protocol, that set is scored from the run's checkpoint (when there is one) and the
/// summary rewritten.
pub fn execute(run: &PlannedRun, out: &Path, data: &SweepData, options: &RunOptions) -> Result<RunSummaryFile, Error> {
    let dir = run.dir(out);
    let (mut summary, mut model) = match run_state(run, out)? {
        RunState::Finished(summary) => (*summary, None),
        RunState::New | RunState::Started => {
            let (summary, trainer) = train_run(run, out, data, options)?;
            (summary, Some(trainer.model))
        }
    };
    let missing: Vec<&(EvalSet, Vec<String>)> =
        data.eval_sets.iter().filter(|(set, _)| !scored(&summary, set, run.config.model.seq_len)).collect();
    if missing.is_empty() && model.is_none() {
        return Ok(summary);
    }
    if !missing.is_empty() && model.is_none() && !dir.join("checkpoint.safetensors").exists() {
        // Only the summary survives (a committed one, on another machine): nothing to score with.
        return Ok(summary);
    }
    if !missing.is_empty() {
        let model = match &mut model {
            Some(model) => model,
            None => model.insert(load_run_model(&dir)?),
        };
        for &(set, documents) in &missing {
            let first = std::ptr::eq(set, &data.eval_sets[0].0);
            let (score, usage) = score_set(model, data.tokenizer, set, documents);
            summary.eval.insert(set.name.clone(), score);
            if first {
                summary.usage = usage;
            }
        }
    }
    summary.save(&dir.join("summary.json"))?;
    Ok(summary)
}

/// Whether `summary` holds `set` scored under the protocol the sweep uses now.
fn scored(summary: &RunSummaryFile, set: &EvalSet, context: usize) -> bool {
    let protocol = Protocol::non_overlapping(context).describe();
    summary.eval.get(&set.name).is_some_and(|score| score.protocol == protocol && score.documents.is_some())
}

fn load_run_model(dir: &Path) -> Result<Gpt<f32>, Error> {
    let path = dir.join("checkpoint.safetensors");
    let checkpoint = Checkpoint::load(&path).map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
    Ok(train::load_model(checkpoint)?.0)
}

/// Trains the run to its last step (its directory locked meanwhile); the summary has no held-out scores
/// yet. `options.out_dir` is replaced by the run's directory; a stopped run is an error that says so.
fn train_run(
    run: &PlannedRun,
    out: &Path,
    data: &SweepData,
    options: &RunOptions,
) -> Result<(RunSummaryFile, Trainer), Error> {
    let dir = start_run(run, out)?;
    let checkpoint = dir.join("checkpoint.safetensors");
    // A run stopped before its first checkpoint starts again; its metrics are moved aside.
    let existing = if checkpoint.exists() { Existing::Resume } else { Existing::Overwrite };
    let _lock = RunDir::open(&dir, existing)?;
    let mut trainer = if checkpoint.exists() {
        let loaded =
            Checkpoint::load(&checkpoint).map_err(|e| Error::Train(format!("{}: {e}", checkpoint.display())))?;
        Trainer::from_checkpoint(loaded)?
    } else {
        Trainer::new(run.config.clone())?
    };
    trainer.set_tokenizer(data.tokenizer_text.to_string());
    let options = RunOptions { out_dir: dir.clone(), ..*options };
    let trained = train::run(&mut trainer, data.train, Some(data.valid), &options)?;
    if trained.steps < run.config.train.steps {
        return Err(Error::Train(format!(
            "run {} stopped at step {} of {}, with a checkpoint; run the sweep again to continue it",
            run.id(),
            trained.steps,
            run.config.train.steps
        )));
    }
    let train_tokens = run.config.train.steps as f64 * run.tokens_per_step() as f64;
    let summary = RunSummaryFile {
        grid: run.grid.clone(),
        name: run.name.clone(),
        labels: run.labels.iter().cloned().collect(),
        budget: run.budget,
        seed: run.seed,
        steps: trained.steps,
        tokens_per_step: run.tokens_per_step(),
        flops_per_token: flops::train_flops_per_token(&run.config.model),
        train_flops: run.train_flops(),
        params: trainer.model.num_params(),
        train_set_tokens: data.train.token_count(),
        epochs: train_tokens / data.train.token_count().max(1) as f64,
        final_train_loss: trained.final_train_loss.is_finite().then_some(trained.final_train_loss),
        train_seconds: trained.train_seconds,
        tokens_per_second: if trained.train_seconds > 0.0 { train_tokens / trained.train_seconds } else { 0.0 },
        eval: BTreeMap::new(),
        usage: Vec::new(),
        machine: machine(),
        date: today(),
        config: run.config.clone(),
    };
    Ok((summary, trainer))
}

/// Scores `documents` of `set` document by document in non-overlapping windows of the model's context
/// (tails included), counting expert usage on the way; LAMBADA sets add last-word accuracy.
fn score_set(
    model: &mut Gpt<f32>,
    tokenizer: &Tokenizer,
    set: &EvalSet,
    documents: &[String],
) -> (SetScore, Vec<UsageScore>) {
    let protocol = Protocol::non_overlapping(model.config().seq_len);
    model.track_usage(true);
    let report = text::score_documents(model, tokenizer, documents, &protocol, false);
    let usage = eval::layer_usage(model)
        .into_iter()
        .map(|u| UsageScore {
            block: u.block,
            fraction_used: u.fraction_used,
            kl_from_uniform: u.kl_from_uniform,
            selection_kl_from_uniform: u.selection_kl_from_uniform,
        })
        .collect();
    model.track_usage(false);
    let last_word_accuracy =
        set.lambada.then(|| lambada::score_lambada(model, tokenizer, documents, protocol.context).accuracy());
    let total = &report.total;
    let score = SetScore {
        protocol: protocol.describe(),
        documents: Some(report.documents),
        tokens: total.tokens,
        bytes: Some(total.bytes),
        loss: total.loss(),
        perplexity: total.perplexity(),
        bits_per_byte: Some(total.bits_per_byte()),
        last_word_accuracy,
    };
    (score, usage)
}

/// The CPU model, its family and model numbers (two CPUs of one marketing name can differ, as Zen 3 and
/// Zen 4 EPYCs do), the vector width this binary was compiled for (it changes the rounding of every sum)
/// and the number of threads, e.g. "AMD EPYC (family 25, model 17), AVX-512 build, 2 threads".
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let name = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let numbers = match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!(" (family {family}, model {model})"),
        _ => String::new(),
    };
    let threads = crate::kernels::parallel::current_num_threads();
    format!("{name}{numbers}, {} build, {threads} threads", simd_build())
}

/// The widest x86 vector extension this binary was compiled to use (`.cargo/config.toml` builds for the
/// machine it is built on).
fn simd_build() -> &'static str {
    if cfg!(target_feature = "avx512f") {
        "AVX-512"
    } else if cfg!(target_feature = "avx2") {
        "AVX2"
    } else if cfg!(target_arch = "x86_64") {
        "SSE2"
    } else {
        std::env::consts::ARCH
    }
}

/// Today's date in UTC, `YYYY-MM-DD` (the civil-from-days algorithm of H. Hinnant's date library).
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
