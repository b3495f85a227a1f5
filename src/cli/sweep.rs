//! `peerlm sweep`: run the grids of a sweep spec, one directory per run, resumable; or list one
//! self-contained command per run, for a scheduler. See [`peerlm::sweep`] for the spec and the layout.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Args;
use peerlm::data::{tokenizer_file, DocumentReader, TokenizerId};
use peerlm::sweep::{self, PlannedRun, RunState, RunSummaryFile, SweepData, SweepSpec};
use peerlm::train::RunOptions;

use super::{interrupt, open_shards, prepare};

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep file: a base config and grids of runs (see configs/study/).
    #[arg(long)]
    spec: PathBuf,
    /// Output directory: the prepared data and one directory per run (default runs/<spec name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A prepared data directory to use instead of the spec's "data" files.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one self-contained command per run, and run nothing.
    #[arg(long)]
    list: bool,
    /// Run only these runs, named grid/name as --list prints them.
    #[arg(long, num_args = 1..)]
    run: Vec<String>,
    /// Also copy each finished run's summary to <DIR>/<grid>/<name>.json (the files a report is made of).
    #[arg(long)]
    summaries: Option<PathBuf>,
}

pub fn run(args: &SweepArgs) -> Result<ExitCode, Box<dyn Error>> {
    let spec = SweepSpec::load(&args.spec)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.spec.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    let mut runs = select(spec.plan()?, &args.run)?;
    // Cheapest budgets first, so that whole curves land early in a long sweep.
    runs.sort_by(|a, b| a.budget.total_cmp(&b.budget));
    if args.list {
        for run in &runs {
            println!("{}", command_for(args, &out, run));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let vocab = runs.first().map_or(0, |r| r.config.model.vocab_size);
    let data_dir = match &args.data {
        Some(dir) => dir.clone(),
        None => prepared_data(&spec, &out, vocab)?,
    };
    let tokenizer_path = data_dir.join("tokenizer.bpe");
    let tokenizer = tokenizer_file::load(&tokenizer_path)?;
    let id = TokenizerId::of(&tokenizer, tokenizer_path.display().to_string());
    let tokenizer_text = tokenizer_file::to_text(&tokenizer);
    let eval_sets = spec
        .eval
        .iter()
        .map(|set| Ok((set.clone(), read_documents(&set.path)?)))
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    let stop = interrupt::install()?;
    let options = RunOptions { progress: true, stop: Some(stop), ..RunOptions::new(&out) };
    let mut eta = Eta::default();
    let mut to_train: Vec<bool> = Vec::with_capacity(runs.len());
    for run in &runs {
        if let Some(dir) = &args.summaries {
            adopt_committed_summary(run, &out, dir)?;
        }
        to_train.push(!matches!(sweep::run_state(run, &out)?, RunState::Finished(_)));
    }
    for (i, run) in runs.iter().enumerate() {
        if run.config.model.vocab_size != tokenizer.vocab_size() {
            return Err(format!(
                "run {}: model.vocab_size {} but the tokenizer has {}",
                run.id(),
                run.config.model.vocab_size,
                tokenizer.vocab_size()
            )
            .into());
        }
        let seq_len = run.config.model.seq_len;
        let train = open_shards(&data_dir, "train", seq_len, &id)?;
        let valid = open_shards(&data_dir, "valid", seq_len, &id)?;
        let finished = !to_train[i];
        let left = runs.iter().zip(&to_train).skip(i).filter(|(_, &train)| train).map(|(r, _)| r.train_flops());
        let time_left = eta.seconds_left(left);
        eprintln!(
            "[{}/{}] {}: {} steps, {:.2e} FLOPs{}{}",
            i + 1,
            runs.len(),
            run.id(),
            run.config.train.steps,
            run.train_flops(),
            if finished { " (finished)" } else { "" },
            time_left.map_or(String::new(), |s| format!("; whole sweep ETA {}", hours_minutes(s)))
        );
        let data = SweepData {
            train: &train,
            valid: &valid,
            tokenizer: &tokenizer,
            tokenizer_text: &tokenizer_text,
            eval_sets: &eval_sets,
        };
        let started = Instant::now();
        let summary = match sweep::execute(run, &out, &data, &options) {
            Ok(summary) => summary,
            Err(e) if stop.load(Ordering::Relaxed) => {
                eprintln!("interrupted: {e}");
                return Ok(ExitCode::from(130));
            }
            Err(e) => return Err(e.into()),
        };
        if !finished {
            eta.record(run.train_flops(), summary.train_seconds, started.elapsed().as_secs_f64());
        }
        for (name, score) in &summary.eval {
            eprintln!("  {}: {name} perplexity {:.2} ({} tokens)", run.id(), score.perplexity, score.tokens);
        }
        if let Some(dir) = &args.summaries {
            let path = dir.join(&run.grid).join(format!("{}.json", run.name));
            std::fs::create_dir_all(path.parent().expect("has a grid directory"))?;
            // A committed summary that already says the same is left as it is (a rewrite would only
            // change its layout, and a reader's `git status`).
            if !RunSummaryFile::load(&path).is_ok_and(|committed| committed == summary) {
                summary.save(&path)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A run whose summary was committed (under `summaries`) but whose directory is gone, as on a new
/// machine, is finished: its summary goes back into a fresh run directory instead of training again.
fn adopt_committed_summary(run: &PlannedRun, out: &Path, summaries: &Path) -> Result<(), Box<dyn Error>> {
    let committed = summaries.join(&run.grid).join(format!("{}.json", run.name));
    if !committed.exists() || run.dir(out).join("config.json").exists() {
        return Ok(());
    }
    let summary = RunSummaryFile::load(&committed)?;
    if summary.config != run.config {
        return Err(
            format!("{}: holds another config than the spec gives for run {}", committed.display(), run.id()).into()
        );
    }
    let dir = sweep::start_run(run, out)?;
    summary.save(&dir.join("summary.json"))?;
    Ok(())
}

/// The documents of a held-out file (C4-style JSON lines, or one plain text document).
fn read_documents(path: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    let reader = DocumentReader::open(&[path.to_path_buf()], false)?;
    Ok(reader.map(|document| document.map(|d| d.text)).collect::<Result<_, _>>()?)
}

/// The runs named by `wanted` (all when empty); an unknown name is an error listing none of the others.
fn select(runs: Vec<PlannedRun>, wanted: &[String]) -> Result<Vec<PlannedRun>, Box<dyn Error>> {
    if wanted.is_empty() {
        return Ok(runs);
    }
    if let Some(unknown) = wanted.iter().find(|w| !runs.iter().any(|r| &r.id() == *w)) {
        return Err(format!("--run {unknown}: no such run in the spec (see --list)").into());
    }
    Ok(runs.into_iter().filter(|r| wanted.contains(&r.id())).collect())
}

/// The command that runs `run` alone, with the same spec, output and data.
fn command_for(args: &SweepArgs, out: &Path, run: &PlannedRun) -> String {
    let mut command = format!("peerlm sweep --spec {} --out {} --run {}", args.spec.display(), out.display(), run.id());
    if let Some(data) = &args.data {
        command += &format!(" --data {}", data.display());
    }
    if let Some(dir) = &args.summaries {
        command += &format!(" --summaries {}", dir.display());
    }
    command
}

/// `<out>/data`, tokenized from the spec's files on first use. It is prepared in a directory of its own
/// and renamed into place, so jobs started at once on a cluster never read a half-written one: the first
/// rename wins and the others use its result.
fn prepared_data(spec: &SweepSpec, out: &Path, vocab: usize) -> Result<PathBuf, Box<dyn Error>> {
    let dir = out.join("data");
    if dir.join("tokenizer.bpe").exists() {
        return Ok(dir);
    }
    let data = spec.data.as_ref().ok_or("the spec has no \"data\" section and no --data was given")?;
    let temp = out.join(format!("data.tmp-{}", std::process::id()));
    eprintln!("preparing the sweep's data into {} (vocabulary {vocab})", dir.display());
    let args = prepare::PrepareArgs::new(data.train.clone(), data.valid.clone(), temp.clone(), vocab);
    let prepared = prepare::run(&args).and_then(|()| Ok(std::fs::rename(&temp, &dir)?));
    if prepared.is_err() || temp.exists() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    match prepared {
        Ok(()) => Ok(dir),
        Err(_) if dir.join("tokenizer.bpe").exists() => Ok(dir),
        Err(e) => Err(e),
    }
}

/// The whole sweep's time left, from the runs trained so far in this sitting: seconds per training FLOP,
/// plus a fixed cost per run (scoring the held-out sets, loading), which dominates the smallest budgets.
#[derive(Default)]
struct Eta {
    flops: f64,
    train_seconds: f64,
    other_seconds: f64,
    runs: usize,
}

impl Eta {
    fn record(&mut self, flops: f64, train_seconds: f64, wall_seconds: f64) {
        self.flops += flops;
        self.train_seconds += train_seconds;
        self.other_seconds += (wall_seconds - train_seconds).max(0.0);
        self.runs += 1;
    }

    /// Seconds for runs still to train with these training FLOPs; `None` before the first run is done.
    fn seconds_left(&self, flops_left: impl Iterator<Item = f64>) -> Option<f64> {
        if self.runs == 0 || self.flops <= 0.0 {
            return None;
        }
        let (count, flops) = flops_left.fold((0, 0.0), |(n, f), run| (n + 1, f + run));
        Some(flops * self.train_seconds / self.flops + count as f64 * self.other_seconds / self.runs as f64)
    }
}

fn hours_minutes(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as u64;
    format!("{}h{:02}m", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::Eta;

    #[test]
    fn the_eta_charges_flops_at_the_measured_rate_plus_each_run_its_fixed_cost() {
        let mut eta = Eta::default();
        assert_eq!(eta.seconds_left([1e12].into_iter()), None);
        // 1e12 FLOPs trained in 10 s with 5 s around them, then 3e12 in 30 s with 15 s around them:
        // 1e-11 s per FLOP and 10 s per run.
        eta.record(1e12, 10.0, 15.0);
        eta.record(3e12, 30.0, 45.0);
        let left = eta.seconds_left([2e12, 4e12].into_iter()).unwrap();
        assert!((left - (60.0 + 2.0 * 10.0)).abs() < 1e-9, "{left}");
    }
}
