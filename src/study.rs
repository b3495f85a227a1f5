//! The study's numbers, from the run summaries a sweep leaves (`docs/reproduction/runs/<grid>/<run>.json`):
//! loading them, folding runs that differ only in their seed into one point with a mean and a spread,
//! picking the best size of each method at each budget, and deciding whether one point beats another by
//! more than the seeds scatter. `peerlm report` writes `docs/REPRODUCTION.md` from these; nothing here
//! formats text.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::Error;
use crate::model::config::FfwKind;
use crate::sweep::{RunSummaryFile, UsageScore};
use crate::train::RunConfig;

/// Every summary under `dir`, one directory per grid, sorted by grid and run name. A summary whose grid
/// is not the name of its directory is refused.
pub fn load_summaries(dir: &Path) -> Result<Vec<RunSummaryFile>, Error> {
    let mut summaries = Vec::new();
    for grid_dir in sorted_entries(dir)? {
        if !grid_dir.is_dir() {
            continue;
        }
        let grid = grid_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for path in sorted_entries(&grid_dir)? {
            if path.extension().is_some_and(|e| e == "json") {
                let summary = RunSummaryFile::load(&path)?;
                if summary.grid != grid {
                    return Err(Error::Train(format!(
                        "{}: a summary of grid {} in the directory of grid {grid}",
                        path.display(),
                        summary.grid
                    )));
                }
                summaries.push(summary);
            }
        }
    }
    summaries.sort_by(|a, b| (&a.grid, &a.name).cmp(&(&b.grid, &b.name)));
    Ok(summaries)
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Train(format!("{}: {e}", dir.display())))?;
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Train(format!("{}: {e}", dir.display())))?;
    paths.sort();
    Ok(paths)
}

/// Mean and scatter of one figure over seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Sample standard deviation (divided by n − 1); none for a single value.
    pub std: Option<f64>,
}

impl Spread {
    /// The spread of `values`; none when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let std = (n > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (squares / (n - 1) as f64).sqrt()
        });
        Some(Spread { n, mean, min, max, std })
    }

    /// max − min, known only with two values or more.
    pub fn range(&self) -> Option<f64> {
        (self.n > 1).then_some(self.max - self.min)
    }
}

/// Expert usage of a point's first retrieval layer, over seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageSpread {
    pub block: usize,
    pub fraction_used: Spread,
    /// KL(gate-weighted usage ‖ uniform), the paper's figure.
    pub kl_from_uniform: Spread,
    /// KL(selection counts ‖ uniform).
    pub selection_kl_from_uniform: Spread,
}

/// Runs of one config and budget at one or more seeds.
#[derive(Clone, Debug)]
pub struct Point {
    /// The grid of its first run (runs of `isoflop` and `isoflop-seeds` may share a point).
    pub grid: String,
    pub labels: BTreeMap<String, String>,
    pub budget: f64,
    pub params: usize,
    /// The config of its first run; only `train.seed` differs between its runs.
    pub config: RunConfig,
    pub seeds: Vec<u64>,
    /// `grid/name` of each run.
    pub runs: Vec<String>,
    /// Perplexity by evaluation set, over the runs that scored the set.
    pub perplexity: BTreeMap<String, Spread>,
    pub usage: Option<UsageSpread>,
    pub epochs: Spread,
}

impl Point {
    /// `dense`, `moe`, `pkm` or `peer`, from the config.
    pub fn method(&self) -> String {
        method_of(&self.config)
    }

    pub fn perplexity(&self, set: &str) -> Option<&Spread> {
        self.perplexity.get(set)
    }

    pub fn label(&self, axis: &str) -> &str {
        self.labels.get(axis).map_or("", String::as_str)
    }
}

/// N (experts or memory slots), h (heads) and k (top-k per head) of a PEER or PKM config; none for
/// dense and MoE.
pub fn retrieval_shape(config: &RunConfig) -> Option<(usize, usize, usize)> {
    let model = &config.model;
    match model.ffw {
        FfwKind::Peer => Some((model.peer.num_experts, model.peer.keys.heads, model.peer.keys.top_k)),
        FfwKind::Pkm => Some((model.pkm.sub_keys * model.pkm.sub_keys, model.pkm.keys.heads, model.pkm.keys.top_k)),
        FfwKind::Dense | FfwKind::Moe => None,
    }
}

/// The feed-forward kind of a config, as its JSON spells it.
pub fn method_of(config: &RunConfig) -> String {
    match serde_json::to_value(config.model.ffw) {
        Ok(Value::String(name)) => name,
        _ => format!("{:?}", config.model.ffw).to_lowercase(),
    }
}

/// Folds runs whose configs are equal but for `train.seed`, at the same budget and with the same labels,
/// into points, in the order their first runs come. The labels keep apart the points that two axes of one
/// grid reach with the same config (the `active` grid's h·k = 32 is on its `h4` and on its `k8` split);
/// a seed that comes twice in a point (the same config and seed trained twice) counts once, so that a
/// replica is never taken for a second seed with zero spread.
pub fn aggregate(runs: &[&RunSummaryFile]) -> Vec<Point> {
    let mut groups: Vec<(String, Vec<&RunSummaryFile>)> = Vec::new();
    for run in runs {
        let key = seedless_key(run);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) if members.iter().any(|m| m.seed == run.seed) => {}
            Some((_, members)) => members.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    groups.into_iter().map(|(_, members)| point_of(&members)).collect()
}

fn seedless_key(run: &RunSummaryFile) -> String {
    let mut config = run.config.clone();
    config.train.seed = 0;
    let config = serde_json::to_string(&config).expect("a config serialises");
    format!("{:e}|{:?}|{config}", run.budget, run.labels)
}

fn point_of(runs: &[&RunSummaryFile]) -> Point {
    let first = runs[0];
    let mut perplexity = BTreeMap::new();
    for set in runs.iter().flat_map(|r| r.eval.keys()) {
        if !perplexity.contains_key(set) {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.eval.get(set)).map(|s| s.perplexity).collect();
            perplexity.insert(set.clone(), Spread::of(&values).expect("the set came from a run"));
        }
    }
    let epochs: Vec<f64> = runs.iter().map(|r| r.epochs).collect();
    Point {
        grid: first.grid.clone(),
        labels: first.labels.clone(),
        budget: first.budget,
        params: first.params,
        config: first.config.clone(),
        seeds: runs.iter().map(|r| r.seed).collect(),
        runs: runs.iter().map(|r| format!("{}/{}", r.grid, r.name)).collect(),
        perplexity,
        usage: usage_of(runs),
        epochs: Spread::of(&epochs).expect("a point has a run"),
    }
}

/// Usage of the first retrieval layer, over the runs that report one.
fn usage_of(runs: &[&RunSummaryFile]) -> Option<UsageSpread> {
    let firsts: Vec<&UsageScore> = runs.iter().filter_map(|r| r.usage.first()).collect();
    let over = |field: fn(&UsageScore) -> f64| Spread::of(&firsts.iter().map(|u| field(u)).collect::<Vec<_>>());
    Some(UsageSpread {
        block: firsts.first()?.block,
        fraction_used: over(|u| u.fraction_used)?,
        kl_from_uniform: over(|u| u.kl_from_uniform)?,
        selection_kl_from_uniform: over(|u| u.selection_kl_from_uniform)?,
    })
}

/// Evaluation set names in report order: `c4`, `wikitext`, `lambada`, then the others alphabetically.
pub fn ordered_sets<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let rank = |name: &str| ["c4", "wikitext", "lambada"].iter().position(|s| *s == name).unwrap_or(3);
    let mut sets: Vec<String> = names.into_iter().cloned().collect();
    sets.sort_by(|a, b| (rank(a), a).cmp(&(rank(b), b)));
    sets.dedup();
    sets
}

/// Methods in the paper's column order: dense, MoE, PKM, PEER, then any other.
pub fn ordered_methods<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let rank = |name: &str| ["dense", "moe", "pkm", "peer"].iter().position(|s| *s == name).unwrap_or(4);
    let mut methods: Vec<String> = names.into_iter().cloned().collect();
    methods.sort_by(|a, b| (rank(a), a).cmp(&(rank(b), b)));
    methods.dedup();
    methods
}

/// One budget of the isoFLOP comparison: each method's point with the lowest mean perplexity on `set`.
#[derive(Clone, Debug)]
pub struct BudgetBest<'a> {
    pub budget: f64,
    pub best: BTreeMap<String, &'a Point>,
}

/// The best point of each method at each budget (lowest mean perplexity on `set`; points that did not
/// score `set` take no part), budgets ascending.
pub fn best_per_budget<'a>(points: &'a [Point], set: &str) -> Vec<BudgetBest<'a>> {
    let mut budgets: Vec<f64> = points.iter().map(|p| p.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    budgets
        .into_iter()
        .map(|budget| {
            let mut best: BTreeMap<String, &Point> = BTreeMap::new();
            for point in points.iter().filter(|p| p.budget == budget) {
                let Some(mean) = point.perplexity(set).map(|s| s.mean) else { continue };
                let beaten = best.get(&point.method()).and_then(|b| b.perplexity(set)).is_some_and(|b| b.mean <= mean);
                if !beaten {
                    best.insert(point.method(), point);
                }
            }
            BudgetBest { budget, best }
        })
        .collect()
}

/// Where a method's best point lies among the sizes run at its budget: a curve has a visible minimum
/// only if the best is neither its smallest nor its largest model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimum {
    Interior,
    Smallest,
    Largest,
    /// One size only: no curve.
    Alone,
}

/// Where `best` lies by parameter count among the points of its method and budget in `points`, and how many
/// sizes there are.
pub fn optimum_position(points: &[Point], best: &Point) -> (Optimum, usize) {
    let curve: Vec<usize> =
        points.iter().filter(|p| p.budget == best.budget && p.method() == best.method()).map(|p| p.params).collect();
    let smaller = curve.iter().filter(|&&params| params < best.params).count();
    let larger = curve.iter().filter(|&&params| params > best.params).count();
    let position = match (smaller, larger) {
        (0, 0) => Optimum::Alone,
        (0, _) => Optimum::Smallest,
        (_, 0) => Optimum::Largest,
        _ => Optimum::Interior,
    };
    (position, curve.len())
}

/// How two points' means compare, measured against how much their seeds scatter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Mean of the second minus mean of the first: positive when the first is lower (better).
    pub gap: f64,
    /// The larger of the two seed ranges (max − min); unknown unless both points have two seeds or more.
    pub spread: Option<f64>,
}

impl Comparison {
    pub fn of(first: &Spread, second: &Spread) -> Comparison {
        let spread = first.range().zip(second.range()).map(|(a, b)| a.max(b));
        Comparison { gap: second.mean - first.mean, spread }
    }

    /// Whether the gap is wider than the seed spread; none when the spread is unknown.
    pub fn exceeds_spread(&self) -> Option<bool> {
        self.spread.map(|spread| self.gap.abs() > spread)
    }
}

/// The paper's ordering on C4 (Table 1, Figure 1): PEER below MoE and PKM, both below dense, as
/// `(lower, higher)` pairs.
pub const PAPER_ORDER: [(&str, &str); 4] = [("peer", "moe"), ("peer", "pkm"), ("moe", "dense"), ("pkm", "dense")];

/// Whether the means of `best` follow [`PAPER_ORDER`]: `Err` names the methods that are missing.
pub fn paper_order_holds(best: &BTreeMap<String, &Point>, set: &str) -> Result<bool, Vec<String>> {
    let missing: Vec<String> =
        ["dense", "moe", "pkm", "peer"].into_iter().filter(|m| !best.contains_key(*m)).map(String::from).collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mean = |method: &str| best[method].perplexity(set).map_or(f64::NAN, |s| s.mean);
    Ok(PAPER_ORDER.iter().all(|(lower, higher)| mean(lower) < mean(higher)))
}

/// Whether `ys` falls at every step (each strictly below the one before).
pub fn falls_monotonically(ys: &[f64]) -> bool {
    ys.windows(2).all(|w| w[1] < w[0])
}

/// Whether the gains of a falling curve shrink: the last step's drop is smaller than the first's. None
/// with fewer than three points, or when the first step gains nothing (a curve that does not fall at
/// first has no gains to saturate).
pub fn saturates(ys: &[f64]) -> Option<bool> {
    (ys.len() >= 3 && ys[1] < ys[0]).then(|| {
        let first = ys[0] - ys[1];
        let last = ys[ys.len() - 2] - ys[ys.len() - 1];
        last < first
    })
}
