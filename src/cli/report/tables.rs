//! The tuning tables and the isoFLOP comparison: the paper's Table 1 layout (rows budgets, columns methods,
//! each cell the best size on C4), every point behind it, Figure 1, and per budget the ordering of the
//! methods and whether each gap is wider than the seed spread.

use peerlm::model::flops;
use peerlm::study::{self, BudgetBest, Comparison, Point};
use peerlm::sweep::RunSummaryFile;

use super::format::{self, table};
use super::Study;

const TUNE_GRIDS: [&str; 4] = ["tune-dense", "tune-moe", "tune-pkm", "tune-peer"];

/// The grids whose points make Table 1.
pub const ISOFLOP_GRIDS: [&str; 2] = ["isoflop", "isoflop-seeds"];

/// One table per tuning grid, best first, and whether every method got as many runs.
pub fn tuning(study: &Study) -> String {
    let mut out = "## Tuning\n\n".to_string();
    let present: Vec<&str> = TUNE_GRIDS.iter().copied().filter(|g| study.has(g)).collect();
    if present.is_empty() {
        return out + "Not run yet.\n";
    }
    out += &tuning_counts(study, &present);
    for grid in present {
        let mut runs = study.grid(grid);
        runs.sort_by(|a, b| b.config.model.d_model.cmp(&a.config.model.d_model).then(c4_ppl(a).total_cmp(&c4_ppl(b))));
        out += &format!("\n### `{grid}`\n\n{}", tuning_table(&runs));
    }
    out
}

fn tuning_counts(study: &Study, present: &[&str]) -> String {
    let counts: Vec<(String, usize)> = present.iter().map(|g| (g.to_string(), study.grid(g).len())).collect();
    let mut budgets: Vec<f64> = present.iter().flat_map(|g| study.grid(g)).map(|r| r.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let budgets: Vec<String> = budgets.into_iter().map(format::budget).collect();
    let same = counts.windows(2).all(|w| w[0].1 == w[1].1);
    let listed = counts.iter().map(|(g, n)| format!("`{g}` {n}")).collect::<Vec<_>>().join(", ");
    let verdict = if same {
        format!("Each tuned method got the same number of tuning runs, {} ({listed})", counts[0].1)
    } else {
        format!("The methods did not get the same number of tuning runs: {listed}")
    };
    format!(
        "{verdict}, at {} FLOPs. Rows are sorted by width, then by C4 validation perplexity; the best of each \
         width is marked.\n",
        budgets.join(", ")
    )
}

fn tuning_table(runs: &[&RunSummaryFile]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let train = run.final_train_loss.map_or("—".to_string(), |l| format!("{l:.3}"));
            let width = run.config.model.d_model;
            let first_of_width = i == 0 || runs[i - 1].config.model.d_model != width;
            vec![
                if first_of_width { "**best**".to_string() } else { String::new() },
                format!("`{}`", run.name),
                format!("d{width}"),
                format!("{}", run.config.train.lr),
                format!("{}", run.config.train.table_lr),
                format::count(run.params as u64),
                run.steps.to_string(),
                train,
                run.eval.get("c4").map_or("—".to_string(), |s| format::ppl(s.perplexity)),
            ]
        })
        .collect();
    table(&["", "run", "width", "lr", "table lr", "params", "steps", "final train loss", "C4 ppl"], &rows)
}

fn c4_ppl(run: &RunSummaryFile) -> f64 {
    run.eval.get("c4").map_or(f64::INFINITY, |s| s.perplexity)
}

/// Table 1, the points behind it, Figure 1 and the per-budget comparisons.
pub fn isoflop(study: &Study, drawn: &[&str]) -> String {
    let mut out = "## Table 1: isoFLOP comparison\n\n".to_string();
    if !study.has("isoflop") {
        return out + "Not run yet (grid `isoflop`).\n";
    }
    if !study.has("isoflop-seeds") {
        out += "Grid `isoflop-seeds` is not run yet: every point has one seed and its spread is unknown.\n\n";
    }
    let points = study.points(&ISOFLOP_GRIDS);
    let sets = study::ordered_sets(points.iter().flat_map(|p| p.perplexity.keys()));
    let best = study::best_per_budget(&points, "c4");
    let methods = study::ordered_methods(best.iter().flat_map(|b| b.best.keys()));
    out += "Learning rates follow the width: each method's best of its tuning runs at d16 and at d128 \
            (`## Tuning`), interpolated geometrically in the width between the two and extrapolated outside them \
            (columns `lr` and `table lr` of the table of every point).\n\n";
    out += "Each cell: the size with the lowest mean C4 validation perplexity at that budget, as mean ± sample \
            standard deviation (min–max) over seeds, with the size and the seed count.\n\n";
    out += &table1(study, "isoflop", &best, &methods, "c4");
    for set in sets.iter().filter(|s| *s != "c4") {
        let rows = table1(study, "isoflop", &best, &methods, set);
        out += &format!("\nThe same models (chosen on C4) on `{set}`:\n\n{rows}");
    }
    out += &ordering(study, "isoflop", &best);
    out += &minima(study, "isoflop", &points, &best);
    out += &figure1(study, drawn);
    out + "\n### Every point\n\n" + EVERY_POINT + &all_points(&points, &sets)
}

/// The first isoFLOP grid, whose every width used the learning rates tuned at d128: kept to show how much
/// the comparison owes to tuning the learning rate per width.
pub fn isoflop_fixed_lr(study: &Study) -> String {
    const GRID: [&str; 1] = ["isoflop-fixed-lr"];
    if !study.has(GRID[0]) {
        return String::new();
    }
    let points = study.points(&GRID);
    let best = study::best_per_budget(&points, "c4");
    let methods = study::ordered_methods(best.iter().flat_map(|b| b.best.keys()));
    let mut out = "## Table 1 with one learning rate per method at every width

"
    .to_string();
    out += "Grid `isoflop-fixed-lr`: the same comparison run first with each method's learning rates tuned at \
            d128 (`## Tuning`) for every width. The tuning at d16 shows those rates far from the best at small \
            widths, so this grid is superseded by Table 1 above; it is kept to show what the comparison owes \
            to tuning the learning rate per width. Best size per method and budget, C4 validation perplexity:\n\n";
    out += &table1(study, GRID[0], &best, &methods, "c4");
    out += &ordering(study, GRID[0], &best);
    out += &minima(study, GRID[0], &points, &best);
    out + "\nRe-create it with:\n\n" + &study.commands_for(&GRID)
}

const EVERY_POINT: &str =
    "`epochs`: passes over the training data. `FFW` and `head`: the shares of a training step's FLOPs \
     (`model::flops`) spent in the feed-forward layers and in the output head; at small widths the head \
     (`6·V·d` per token, against `O(d²)` per block) takes most of the budget, so the feed-forward kinds differ \
     in quality far more than in cost.\n\n";

/// The shares of a training step's FLOPs spent in the feed-forward layers and in the output head.
pub fn flop_shares(point: &Point) -> (f64, f64) {
    let model = &point.config.model;
    let total = flops::model(model).train();
    let ffw: f64 = (0..model.n_layers).map(|b| flops::feed_forward(model, b).train()).sum();
    (ffw / total, flops::output_head(model).train() / total)
}

/// Rows budgets, columns methods; a cell whose curve in `grid` is not complete says how many sizes ran.
fn table1(study: &Study, grid: &str, best: &[BudgetBest], methods: &[String], set: &str) -> String {
    let mut header = vec!["budget (FLOPs)".to_string()];
    header.extend(methods.iter().map(|m| format::method(m)));
    let rows: Vec<Vec<String>> = best
        .iter()
        .map(|row| {
            let mut cells = vec![format::budget(row.budget)];
            cells.extend(methods.iter().map(|m| {
                let unfinished = study.unfinished_curve(grid, m, row.budget);
                row.best.get(m).map_or("—".to_string(), |p| cell(p, set, unfinished))
            }));
            cells
        })
        .collect();
    table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows)
}

fn cell(point: &Point, set: &str, unfinished: Option<(usize, usize)>) -> String {
    let Some(spread) = point.perplexity(set) else { return "—".to_string() };
    let sizes = unfinished.map_or(String::new(), |(run, planned)| format!(", {run} of {planned} sizes run"));
    format!("{} ({}, {}{sizes})", format::spread(spread, format::ppl), size(point), format::seeds(spread.n))
}

/// "dense 5 of 7 sizes, PEER 0 of 7 sizes": the curves of `grid` at `budget` with sizes still to run.
pub fn unfinished_curves(study: &Study, grid: &str, budget: f64) -> Option<String> {
    let curves: Vec<String> = ["dense", "moe", "pkm", "peer"]
        .iter()
        .filter_map(|m| {
            let (run, planned) = study.unfinished_curve(grid, m, budget)?;
            Some(format!("{} {run} of {planned} sizes", format::method(m)))
        })
        .collect();
    (!curves.is_empty()).then(|| curves.join(", "))
}

/// The size label of a point, or its parameter count.
pub fn size(point: &Point) -> String {
    match point.labels.get("size") {
        Some(size) => size.clone(),
        None => format!("{} params", format::count(point.params as u64)),
    }
}

/// Per budget: the methods in order of mean C4 perplexity, whether the paper's order holds, and each
/// pair's gap against the seed spread.
fn ordering(study: &Study, grid: &str, best: &[BudgetBest]) -> String {
    let mut out = "\nPer budget, on C4 (Table 1's rows):\n\n".to_string();
    for row in best {
        let mut ranked: Vec<(&String, f64)> =
            row.best.iter().filter_map(|(m, p)| p.perplexity("c4").map(|s| (m, s.mean))).collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
        let chain =
            ranked.iter().map(|(m, v)| format!("{} {}", format::method(m), format::ppl(*v))).collect::<Vec<_>>();
        let verdict = match (study::paper_order_holds(&row.best, "c4"), unfinished_curves(study, grid, row.budget)) {
            (Err(missing), _) => format!("the paper's ordering cannot be checked: no {} run", missing.join(", ")),
            (_, Some(curves)) => format!("the paper's ordering cannot be judged yet: curves not complete ({curves})"),
            (Ok(true), None) => "the paper's ordering PEER < MoE/PKM < dense holds on the means".to_string(),
            (Ok(false), None) => "the paper's ordering PEER < MoE/PKM < dense does not hold".to_string(),
        };
        out += &format!("- **{}**: {}; {verdict}.\n", format::budget(row.budget), chain.join(" < "));
    }
    out + "\n" + &pairs(best)
}

/// Whether each curve has a visible minimum: its best size is neither the smallest nor the largest run.
fn minima(study: &Study, grid: &str, points: &[Point], best: &[BudgetBest]) -> String {
    let mut out = "\nWhere each curve's best size lies among the sizes run (a visible minimum needs a worse size on \
                   either side):\n\n"
        .to_string();
    for row in best {
        let methods = study::ordered_methods(row.best.keys());
        let cells: Vec<String> = methods
            .iter()
            .map(|m| {
                let point = row.best[m];
                let (position, sizes) = study::optimum_position(points, point);
                let place = match (study.unfinished_curve(grid, m, row.budget), position) {
                    (Some((run, planned)), _) => format!("{run} of {planned} sizes run: not known yet"),
                    (None, study::Optimum::Interior) => "inside the range: a visible minimum".to_string(),
                    (None, study::Optimum::Smallest) => format!("the smallest of {sizes} sizes: no visible minimum"),
                    (None, study::Optimum::Largest) => format!("the largest of {sizes} sizes: no visible minimum"),
                    (None, study::Optimum::Alone) => "the only size run".to_string(),
                };
                format!("{} {} ({place})", format::method(m), size(point))
            })
            .collect();
        out += &format!("- **{}**: {}.\n", format::budget(row.budget), cells.join("; "));
    }
    out
}

fn pairs(best: &[BudgetBest]) -> String {
    let mut rows = Vec::new();
    for row in best {
        let methods = study::ordered_methods(row.best.keys());
        for (i, first) in methods.iter().enumerate() {
            for second in &methods[i + 1..] {
                let (Some(a), Some(b)) = (row.best[first].perplexity("c4"), row.best[second].perplexity("c4")) else {
                    continue;
                };
                let comparison = Comparison::of(a, b);
                rows.push(vec![
                    format::budget(row.budget),
                    format!("{} vs {}", format::method(first), format::method(second)),
                    format::ppl(comparison.gap),
                    comparison.spread.map_or("unknown".to_string(), format::ppl),
                    verdict(first, second, &comparison),
                ]);
            }
        }
    }
    "Gaps between methods (second minus first mean C4 perplexity) against the seed spread (the larger \
     min–max range of the two); a method is called better only when the gap is wider than the spread:\n\n"
        .to_string()
        + &table(&["budget", "pair", "gap", "seed spread", "verdict"], &rows)
}

/// "PEER better", "within seed spread" or "spread unknown (one seed)".
pub fn verdict(first: &str, second: &str, comparison: &Comparison) -> String {
    let lower = if comparison.gap > 0.0 { first } else { second };
    match comparison.exceeds_spread() {
        Some(true) => format!("{} better", format::method(lower)),
        Some(false) => "within seed spread".to_string(),
        None => format!("{} lower; seed spread unknown (one seed)", format::method(lower)),
    }
}

fn figure1(study: &Study, drawn: &[&str]) -> String {
    if !drawn.contains(&"isoflop.svg") {
        return String::new();
    }
    format!(
        "\n### Figure 1: perplexity against parameters\n\n\
         ![C4 validation perplexity against total parameters, one colour per method, one marker and line \
         style per budget](reproduction/isoflop.svg)\n\nRe-create it with:\n\n{}",
        study.commands_for(&ISOFLOP_GRIDS)
    )
}

fn all_points(points: &[Point], sets: &[String]) -> String {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted
        .sort_by(|a, b| a.budget.total_cmp(&b.budget).then(a.method().cmp(&b.method())).then(a.params.cmp(&b.params)));
    let mut header = vec!["budget", "method", "size", "params", "lr", "table lr", "seeds", "epochs", "FFW", "head"];
    let set_headers: Vec<String> = sets.iter().map(|s| format!("{s} ppl")).collect();
    header.extend(set_headers.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|p| {
            let (ffw_share, head_share) = flop_shares(p);
            let mut row = vec![
                format::budget(p.budget),
                format::method(&p.method()),
                size(p),
                format::count(p.params as u64),
                format!("{}", p.config.train.lr),
                format!("{}", p.config.train.table_lr),
                p.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                format!("{:.2}", p.epochs.mean),
                format::percent(ffw_share),
                format::percent(head_share),
            ];
            row.extend(
                sets.iter().map(|s| p.perplexity(s).map_or("—".to_string(), |v| format::spread(v, format::ppl))),
            );
            row
        })
        .collect();
    table(&header, &rows)
}
