//! `peerlm report`: writes `docs/REPRODUCTION.md` and its SVG figures from the committed run summaries,
//! so that no number in it is typed by hand. This file reads the inputs and puts the document together;
//! `header.rs` says what ran where and how to re-create it, `tables.rs` and `ablations.rs` hold the
//! tables, `paper.rs` compares them with the paper, `figures.rs` draws, `format.rs` writes numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::{Path, PathBuf};

use clap::Args;
use peerlm::data::atomic_file;
use peerlm::study::{self, Point};
use peerlm::sweep::{PlannedRun, RunSummaryFile, SweepSpec};

mod ablations;
mod figures;
mod format;
mod header;
mod paper;
mod tables;

#[derive(Args)]
pub struct ReportArgs {
    /// The run summaries: <DIR>/<grid>/<run>.json, as `peerlm sweep --summaries DIR` copies them.
    #[arg(long)]
    summaries: PathBuf,
    /// The markdown file to write; the figures go to `reproduction/` beside it.
    #[arg(long)]
    out: PathBuf,
    /// The sweep specs the grids come from, named in the re-creation commands.
    #[arg(long, default_value = "configs/study")]
    specs: PathBuf,
}

/// The grids of the study, each with the part of the report it feeds.
const STUDY_GRIDS: [(&str, &str); 10] = [
    ("tune-dense", "tuning"),
    ("tune-moe", "tuning"),
    ("tune-pkm", "tuning"),
    ("tune-peer", "tuning"),
    ("isoflop", "Table 1 and Figure 1"),
    ("isoflop-seeds", "the seed spread of Table 1"),
    ("isoflop-fixed-lr", "Table 1 with each method's d128 learning rate at every width"),
    ("experts", "Figure 3a"),
    ("active", "Figure 3b"),
    ("bn", "Table 2"),
];

/// Where the sweeps output their runs in the study's commands.
const SWEEP_OUT: &str = "runs/study";

/// Everything the report is made from.
pub struct Study {
    runs: Vec<RunSummaryFile>,
    /// The spec file that defines each grid.
    specs: GridSpecFiles,
    /// Every run those specs plan, run or not: what the report measures completeness against.
    planned: Vec<PlannedRun>,
    args_summaries: PathBuf,
    args_out: PathBuf,
    specs_dir: PathBuf,
}

impl Study {
    fn grid(&self, name: &str) -> Vec<&RunSummaryFile> {
        self.runs.iter().filter(|r| r.grid == name).collect()
    }

    fn has(&self, grid: &str) -> bool {
        self.runs.iter().any(|r| r.grid == grid)
    }

    /// How many runs the spec of `grid` plans.
    fn planned_count(&self, grid: &str) -> usize {
        self.planned.iter().filter(|r| r.grid == grid).count()
    }

    /// `(sizes run, sizes planned)` of `method`'s curve at `budget` in `grid`, when its spec plans sizes
    /// that have not run yet: such a curve's best size may still move.
    fn unfinished_curve(&self, grid: &str, method: &str, budget: f64) -> Option<(usize, usize)> {
        let label =
            |labels: &[(String, String)], axis: &str| labels.iter().find(|(a, _)| a == axis).map(|(_, v)| v.clone());
        let planned: BTreeSet<Option<String>> = self
            .planned
            .iter()
            .filter(|r| r.grid == grid && r.budget == budget && label(&r.labels, "method").as_deref() == Some(method))
            .map(|r| label(&r.labels, "size"))
            .collect();
        let run: BTreeSet<Option<String>> = self
            .grid(grid)
            .into_iter()
            .filter(|r| r.budget == budget && r.labels.get("method").map(String::as_str) == Some(method))
            .map(|r| r.labels.get("size").cloned())
            .collect();
        let done = planned.intersection(&run).count();
        (done < planned.len()).then_some((done, planned.len()))
    }

    /// The seed-folded points of these grids together.
    fn points(&self, grids: &[&str]) -> Vec<Point> {
        let runs: Vec<&RunSummaryFile> = self.runs.iter().filter(|r| grids.contains(&r.grid.as_str())).collect();
        study::aggregate(&runs)
    }

    /// The command that runs (or resumes) the sweep holding `grid`, if a spec defines it.
    fn sweep_command(&self, grid: &str) -> Option<String> {
        let spec = self.specs.get(grid)?;
        Some(format!(
            "peerlm sweep --spec {} --out {SWEEP_OUT} --summaries {}",
            spec.display(),
            self.args_summaries.display()
        ))
    }

    fn report_command(&self) -> String {
        format!("peerlm report --summaries {} --out {}", self.args_summaries.display(), self.args_out.display())
    }

    /// The commands that re-create what the grids feed: their sweeps, then the report.
    fn commands_for(&self, grids: &[&str]) -> String {
        let mut lines: Vec<String> = Vec::new();
        for grid in grids {
            let line = self
                .sweep_command(grid)
                .unwrap_or_else(|| format!("# no spec under {} defines grid {grid}", self.specs_dir.display()));
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines.push(self.report_command());
        format!("```\n{}\n```\n", lines.join("\n"))
    }
}

pub fn run(args: &ReportArgs) -> Result<(), Box<dyn Error>> {
    let (specs, planned) = grid_specs(&args.specs)?;
    let study = Study {
        runs: study::load_summaries(&args.summaries)?,
        specs,
        planned,
        args_summaries: args.summaries.clone(),
        args_out: args.out.clone(),
        specs_dir: args.specs.clone(),
    };
    let figures_dir = args.out.parent().unwrap_or(Path::new("")).join("reproduction");
    let figures = figures::all(&study)?;
    let dir = if figures.is_empty() { args.out.parent().unwrap_or(Path::new("")) } else { &figures_dir };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut drawn = Vec::new();
    for figure in figures {
        atomic_file::write(&figures_dir.join(figure.file), figure.svg.as_bytes())?;
        drawn.push(figure.file);
    }
    let document = document(&study, &drawn);
    atomic_file::write(&args.out, document.as_bytes())?;
    eprintln!(
        "wrote {} ({} runs) and {} figures in {}",
        args.out.display(),
        study.runs.len(),
        drawn.len(),
        figures_dir.display()
    );
    Ok(())
}

/// Grid name → the spec file that defines it.
type GridSpecFiles = BTreeMap<String, PathBuf>;

/// Grid name → the spec file under `dir` that defines it (the first in name order), and the runs that
/// file plans for it. A missing directory defines none.
fn grid_specs(dir: &Path) -> Result<(GridSpecFiles, Vec<PlannedRun>), Box<dyn Error>> {
    let (mut specs, mut planned) = (BTreeMap::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok((specs, planned)) };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let spec = SweepSpec::load(&path)?;
        for grid in &spec.grids {
            specs.entry(grid.name.clone()).or_insert_with(|| path.clone());
        }
        let runs = spec.plan().map_err(|e| format!("{}: {e}", path.display()))?;
        planned.extend(runs.into_iter().filter(|r| specs[&r.grid] == path));
    }
    Ok((specs, planned))
}

/// The whole markdown document; `drawn` names the figure files written.
fn document(study: &Study, drawn: &[&str]) -> String {
    [
        header::title(study),
        header::setup(study),
        header::commands(study),
        header::missing(study),
        tables::tuning(study),
        tables::isoflop(study, drawn),
        tables::isoflop_fixed_lr(study),
        ablations::experts(study, drawn),
        ablations::active(study, drawn),
        ablations::batch_norm(study),
        paper::comparison(study),
        header::others(study),
    ]
    .join("\n")
}
