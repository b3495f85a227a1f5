//! Comparison with the paper in plain words: templated sentences that set each of the paper's findings
//! beside the numbers here, say whether it held, and name the table row they read. The paper's own
//! figures are the constants below; every other number comes from the summaries.

use peerlm::study::{self, BudgetBest, Comparison, Point};

use super::ablations::{self, active_count, active_points, batch_norm_points, bn_name, experts_points, shape, split};
use super::format;
use super::tables::{self, ISOFLOP_GRIDS};
use super::Study;

/// The paper's Table 1 (He 2024): C4 perplexity of each method at 6e18 training FLOPs.
const PAPER_TABLE1_C4: [(&str, f64); 4] = [("dense", 23.84), ("moe", 21.41), ("pkm", 21.92), ("peer", 20.63)];
/// The budget of the paper's Table 1.
const PAPER_TABLE1_FLOPS: f64 = 6e18;
/// The paper's Table 2: KL of expert usage from uniform at 1024² experts, without and with query BN.
const PAPER_TABLE2_KL: (f64, f64) = (1.52, 1.06);
const PAPER_TABLE2_EXPERTS: usize = 1024 * 1024;

pub fn comparison(study: &Study) -> String {
    ["## Comparison with the paper\n".to_string(), table1(study), figure3a(study), figure3b(study), table2(study)]
        .join("\n")
}

fn table1(study: &Study) -> String {
    let dense = PAPER_TABLE1_C4[0].1;
    let paper: Vec<String> = PAPER_TABLE1_C4
        .iter()
        .map(|(m, v)| format!("{} {}{}", format::method(m), format::ppl(*v), below(*v, dense)))
        .collect();
    let mut out = format!(
        "- **Table 1.** The paper (He 2024, Table 1, C4 at {} FLOPs): {}.",
        format::budget(PAPER_TABLE1_FLOPS),
        paper.join(", ")
    );
    let points = study.points(&ISOFLOP_GRIDS);
    let best = study::best_per_budget(&points, "c4");
    if best.is_empty() {
        return out + " Here: not run yet.\n";
    }
    // Only a budget with all four curves complete can test the ordering: a partial curve's best may move.
    let judged: Vec<&BudgetBest> = best
        .iter()
        .filter(|b| {
            study::paper_order_holds(&b.best, "c4").is_ok()
                && tables::unfinished_curves(study, "isoflop", b.budget).is_none()
        })
        .collect();
    let pending: Vec<String> = best
        .iter()
        .filter(|b| !judged.iter().any(|j| j.budget == b.budget))
        .map(|b| format::budget(b.budget))
        .collect();
    let pending = if pending.is_empty() {
        String::new()
    } else {
        format!(" Not judged: {} (not every method's curve is complete, see Table 1).", pending.join(", "))
    };
    let Some(last) = judged.last() else {
        return out + " Here: no budget has all four curves complete yet." + &pending + "\n";
    };
    let here: Vec<String> = study::ordered_methods(last.best.keys())
        .iter()
        .filter_map(|m| {
            let mean = last.best[m].perplexity("c4")?.mean;
            let dense = last.best.get("dense").and_then(|d| d.perplexity("c4")).map_or(f64::NAN, |s| s.mean);
            Some(format!("{} {}{}", format::method(m), format::ppl(mean), below(mean, dense)))
        })
        .collect();
    out += &format!(
        " Here, at the largest budget with all four curves complete (Table 1, row {}): {}. ",
        format::budget(last.budget),
        here.join(", ")
    );
    out += if study::paper_order_holds(&last.best, "c4") == Ok(true) {
        "The paper's ordering PEER < MoE/PKM < dense held on the means"
    } else {
        "The paper's ordering PEER < MoE/PKM < dense did not hold"
    };
    let held = judged.iter().filter(|b| study::paper_order_holds(&b.best, "c4") == Ok(true)).count();
    out += &format!(" (it held at {held} of the {} budgets judged)", judged.len());
    out + &peer_against_dense(&last.best) + "." + &pending + "\n\n" + &setting(last)
}

/// What the models of a judged row are, in the figures that set them apart from the paper's: size, the
/// shares of their FLOPs in the head and in the feed-forward layers, passes over the data, expert usage.
fn setting(row: &BudgetBest) -> String {
    let methods = study::ordered_methods(row.best.keys());
    let each: Vec<String> = methods
        .iter()
        .map(|m| {
            let point = row.best[m];
            let (ffw, head) = tables::flop_shares(point);
            let usage = point.usage.as_ref().map_or(String::new(), |u| {
                let n = study::retrieval_shape(&point.config).map_or(point.config.model.moe.num_experts, |s| s.0);
                format!(
                    ", {} of its {} experts or slots used (KL from uniform {})",
                    format::percent(u.fraction_used.mean),
                    format::count(n as u64),
                    format::kl(u.kl_from_uniform.mean)
                )
            });
            format!(
                "{} {} ({} parameters): head {}, feed-forward {} of its FLOPs, {:.2} epochs{usage}",
                format::method(m),
                tables::size(point),
                format::count(point.params as u64),
                format::percent(head),
                format::percent(ffw),
                point.epochs.mean
            )
        })
        .collect();
    format!(
        "  What that row's models are (from their summaries; the shares are of a training step's FLOPs): {}.\n",
        each.join("; ")
    )
}

/// " (13.5% below dense)", or nothing for dense itself or without a dense figure.
fn below(value: f64, dense: f64) -> String {
    if value == dense || !dense.is_finite() {
        return String::new();
    }
    let share = (dense - value) / dense;
    let word = if share >= 0.0 { "below" } else { "above" };
    format!(" ({} {word} dense)", format::percent(share.abs()))
}

fn peer_against_dense(best: &std::collections::BTreeMap<String, &Point>) -> String {
    let (Some(peer), Some(dense)) = (best.get("peer"), best.get("dense")) else { return String::new() };
    let (Some(peer), Some(dense)) = (peer.perplexity("c4"), dense.perplexity("c4")) else { return String::new() };
    format!("; PEER against dense: {}", tables::verdict("peer", "dense", &Comparison::of(peer, dense)))
}

fn figure3a(study: &Study) -> String {
    let out = "- **Figure 3a.** The paper: at a fixed number of active experts, more experts help monotonically.";
    let points = experts_points(study);
    if points.is_empty() {
        return format!("{out} Here: not run yet.\n");
    }
    let mut budgets: Vec<f64> = points.iter().map(|p| p.budget).collect();
    budgets.dedup();
    let lines: Vec<String> = budgets
        .iter()
        .map(|&budget| {
            let curve: Vec<&Point> = points.iter().filter(|p| p.budget == budget).collect();
            let name = |p: &Point| format!("N = {}", ablations::experts_name(shape(p).0));
            format!("at {} FLOPs, {}", format::budget(budget), falls(&curve, name))
        })
        .collect();
    format!("{out} Here (Figure 3a's table): {}.\n", lines.join("; "))
}

fn figure3b(study: &Study) -> String {
    let out = "- **Figure 3b.** The paper: more active experts (h·k) help, and the gains saturate.";
    let points = active_points(study);
    if points.is_empty() {
        return format!("{out} Here: not run yet.\n");
    }
    let mut splits: Vec<String> = points.iter().map(split).collect();
    splits.dedup();
    let lines: Vec<String> = splits
        .iter()
        .map(|s| {
            let curve: Vec<&Point> = points.iter().filter(|p| &split(p) == s).collect();
            let name = |p: &Point| format!("h·k = {}", active_count(p));
            let ys: Vec<f64> = curve.iter().map(|p| c4_mean(p)).collect();
            let saturation = match study::saturates(&ys) {
                Some(true) => "the gains shrank (saturation held)",
                Some(false) => "the gains did not shrink (no saturation)",
                None => "no saturation to judge (fewer than three points, or no gain at the first step)",
            };
            format!("split `{s}`: {}; {saturation}", falls(&curve, name))
        })
        .collect();
    format!("{out} Here (Figure 3b's table): {}.\n", lines.join("; "))
}

/// Whether perplexity fell along `curve`, naming the first rise if it did not, and how many steps were
/// wider than the seed spread.
fn falls(curve: &[&Point], name: impl Fn(&Point) -> String) -> String {
    let ys: Vec<f64> = curve.iter().map(|p| c4_mean(p)).collect();
    let (first, last) = (curve[0], curve[curve.len() - 1]);
    if curve.len() == 1 {
        return format!("one point only, {} at {}: no trend to judge yet", format::ppl(ys[0]), name(first));
    }
    let mut out = if study::falls_monotonically(&ys) {
        format!(
            "perplexity fell at every step, from {} at {} to {} at {} (held)",
            format::ppl(ys[0]),
            name(first),
            format::ppl(ys[ys.len() - 1]),
            name(last)
        )
    } else {
        let rise = ys.windows(2).position(|w| w[1] >= w[0]).expect("not falling, so some step rises");
        format!(
            "perplexity did not fall at every step: {} at {} then {} at {} (did not hold)",
            format::ppl(ys[rise]),
            name(curve[rise]),
            format::ppl(ys[rise + 1]),
            name(curve[rise + 1])
        )
    };
    let spreads: Vec<Option<bool>> = curve
        .windows(2)
        .filter_map(|w| Some(Comparison::of(w[1].perplexity("c4")?, w[0].perplexity("c4")?).exceeds_spread()))
        .collect();
    if spreads.iter().all(Option::is_some) && !spreads.is_empty() {
        let wide = spreads.iter().filter(|s| **s == Some(true)).count();
        out += &format!(", {wide} of {} steps wider than the seed spread", spreads.len());
    } else {
        out += ", seed spread unknown";
    }
    out
}

fn c4_mean(point: &Point) -> f64 {
    point.perplexity("c4").map_or(f64::NAN, |s| s.mean)
}

fn table2(study: &Study) -> String {
    let (paper_off, paper_on) = PAPER_TABLE2_KL;
    let out = format!(
        "- **Table 2.** The paper: query batch norm lowers the KL of expert usage from uniform, {paper_off} → {paper_on} \
         at N = {}.",
        ablations::experts_name(PAPER_TABLE2_EXPERTS)
    );
    let points = batch_norm_points(study);
    if points.is_empty() {
        return format!("{out} Here: not run yet.\n");
    }
    let kl = |p: &Point| p.usage.map(|u| u.kl_from_uniform.mean);
    let Some(off) = points.iter().find(|p| ablations::bn_rank(p) == 0) else {
        return format!("{out} Here: no run without query batch norm, so it cannot be checked.\n");
    };
    let Some(off_kl) = kl(off) else { return format!("{out} Here: the runs report no expert usage.\n") };
    let lines: Vec<String> = points
        .iter()
        .filter(|p| ablations::bn_rank(p) > 0)
        .filter_map(|p| {
            let on = kl(p)?;
            let verdict = if on < off_kl { "lower: held" } else { "not lower: did not hold" };
            Some(format!(
                "{} → {} with {} query BN ({verdict}; Table 2, rows `{}` and `{}`)",
                format::kl(off_kl),
                format::kl(on),
                bn_name(p),
                off.label("bn"),
                p.label("bn")
            ))
        })
        .collect();
    let n = ablations::experts_name(shape(off).0);
    format!("{out} Here, at N = {n}, gate-weighted KL {}.\n", lines.join("; "))
}
