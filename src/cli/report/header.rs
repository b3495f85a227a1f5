//! The report's opening and closing sections: what the runs are, where and when they ran, what they cost,
//! the commands that re-create them, and which grids of the study are missing or extra.

use std::collections::BTreeMap;

use peerlm::study::{self, Spread};

use super::format::{self, table};
use super::{Study, STUDY_GRIDS};

pub fn title(study: &Study) -> String {
    format!(
        "# Reproduction: Mixture of A Million Experts on a CPU\n\n\
         This file is written by `{}` from the {} run summaries under `{}`: every number in it comes from \
         those files or, where marked, from the paper (He 2024). Do not edit it by hand; rerun the command.\n",
        study.report_command(),
        study.runs.len(),
        study.args_summaries.display()
    )
}

/// Hardware, dates, wall time, data and the epochs each budget consumed.
pub fn setup(study: &Study) -> String {
    let mut out = "## Setup\n\n".to_string();
    if study.runs.is_empty() {
        return out + "No run summaries yet.\n";
    }
    out += &format!("- Hardware: {}.\n", hardware(study));
    let dates: Vec<&str> = distinct(study.runs.iter().map(|r| r.date.as_str()));
    out += &format!("- Dates: {}.\n", range_of(&dates));
    let seconds: f64 = study.runs.iter().map(|r| r.train_seconds).sum();
    out += &format!(
        "- Training wall time: {} ({} s) over {} runs, the sum of their `train_seconds` (the training loop \
         over every sitting of a run, its checkpoints and periodic validation included; the held-out scoring \
         after training not).\n",
        format::duration(seconds),
        format::count(seconds.round() as u64),
        study.runs.len()
    );
    let tokens: Vec<String> =
        distinct(study.runs.iter().map(|r| r.train_set_tokens)).into_iter().map(format::count).collect();
    out += &format!("- Training data: {} tokens (`train_set_tokens`).\n", tokens.join(", "));
    out += &format!("- Held-out sets: {}.\n\n", held_out_sets(study));
    out + &epochs_per_budget(study)
}

fn hardware(study: &Study) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &study.runs {
        *counts.entry(run.machine.as_str()).or_default() += 1;
    }
    counts.iter().map(|(machine, n)| format!("{machine} ({n} runs)")).collect::<Vec<_>>().join("; ")
}

fn held_out_sets(study: &Study) -> String {
    let names = study::ordered_sets(study.runs.iter().flat_map(|r| r.eval.keys()));
    let describe = |set: &String| {
        let scored = study.runs.iter().filter_map(|r| r.eval.get(set));
        let tokens: Vec<String> =
            distinct(scored.clone().map(|s| s.tokens as u64)).into_iter().map(format::count).collect();
        let protocols = distinct(scored.map(|s| s.protocol.as_str()));
        format!("`{set}` ({} tokens; {})", tokens.join(" or "), protocols.join("; "))
    };
    names.iter().map(describe).collect::<Vec<_>>().join(", ")
}

fn epochs_per_budget(study: &Study) -> String {
    let mut budgets: Vec<f64> = study.runs.iter().map(|r| r.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let rows: Vec<Vec<String>> = budgets
        .iter()
        .map(|&budget| {
            let runs: Vec<_> = study.runs.iter().filter(|r| r.budget == budget).collect();
            let epochs: Vec<f64> = runs.iter().map(|r| r.epochs).collect();
            let spread = Spread::of(&epochs).expect("a budget has a run");
            let grids = distinct(runs.iter().map(|r| r.grid.as_str()));
            vec![
                format::budget(budget),
                runs.len().to_string(),
                grids.join(", "),
                format!("{:.3}–{:.3}", spread.min, spread.max),
            ]
        })
        .collect();
    "Passes over the training data each budget bought (min–max over its runs):\n\n".to_string()
        + &table(&["budget (FLOPs)", "runs", "grids", "epochs"], &rows)
}

/// The sweep specs and commands, grid by grid.
pub fn commands(study: &Study) -> String {
    let mut out = "## How to re-create it\n\n\
                   Each sweep trains its runs under `runs/study` (resumably) and copies their summaries here; \
                   the report is then rebuilt from the summaries alone:\n\n"
        .to_string();
    let grids: Vec<&str> = STUDY_GRIDS.iter().map(|(g, _)| *g).chain(extra_grids(study)).collect();
    out += &study.commands_for(&grids);
    let rows: Vec<Vec<String>> = grids
        .iter()
        .map(|grid| {
            let spec = study.specs.get(*grid).map_or("none found".to_string(), |p| format!("`{}`", p.display()));
            let planned = study.planned_count(grid);
            let planned = if planned == 0 { "—".to_string() } else { planned.to_string() };
            vec![format!("`{grid}`"), study.grid(grid).len().to_string(), planned, spec]
        })
        .collect();
    out + "\n" + &table(&["grid", "runs", "planned", "spec"], &rows)
}

/// Which grids of the study have no summaries yet, and which have fewer than their spec plans.
pub fn missing(study: &Study) -> String {
    let missing: Vec<String> = STUDY_GRIDS
        .iter()
        .filter_map(|(grid, feeds)| {
            let (run, planned) = (study.grid(grid).len(), study.planned_count(grid));
            if run == 0 {
                Some(format!("- `{grid}` ({feeds}): not run yet.\n"))
            } else if run < planned {
                Some(format!("- `{grid}` ({feeds}): {run} of the {planned} runs its spec plans.\n"))
            } else {
                None
            }
        })
        .collect();
    let body = if missing.is_empty() {
        "Every grid of the study has summaries, as many as its spec plans.\n".to_string()
    } else {
        missing.concat()
    };
    format!("## What is missing\n\n{body}")
}

/// Grids present that the study does not name, listed so that no summary goes unseen.
pub fn others(study: &Study) -> String {
    let extra = extra_grids(study);
    if extra.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = extra
        .iter()
        .flat_map(|grid| study.grid(grid))
        .map(|run| {
            let c4 = run.eval.get("c4").map_or("—".to_string(), |s| format::ppl(s.perplexity));
            vec![format!("`{}/{}`", run.grid, run.name), format::budget(run.budget), c4]
        })
        .collect();
    "## Other grids\n\nSummaries of grids outside the study, listed as they are:\n\n".to_string()
        + &table(&["run", "budget", "C4 ppl"], &rows)
}

fn extra_grids(study: &Study) -> Vec<&str> {
    distinct(study.runs.iter().map(|r| r.grid.as_str()))
        .into_iter()
        .filter(|grid| !STUDY_GRIDS.iter().any(|(g, _)| g == grid))
        .collect()
}

fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort();
    items.dedup();
    items
}

fn range_of(dates: &[&str]) -> String {
    match dates {
        [] => "none".to_string(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} to {last}"),
    }
}
