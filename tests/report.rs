//! `peerlm report` on synthetic run summaries: the seed statistics and best-size choice of `peerlm::study`
//! on hand-computed examples, then the whole report (tables, verdicts, missing grids, figures) and its
//! determinism.
#![cfg(feature = "cli")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peerlm::model::FfwKind;
use peerlm::study::{self, Comparison, Spread};
use peerlm::sweep::{RunSummaryFile, SetScore, UsageScore};
use peerlm::train::RunConfig;

/// A summary of grid `grid` at `budget` and `seed` with C4 perplexity `ppl`; `edit` shapes its config.
fn summary(
    grid: &str,
    labels: &[(&str, &str)],
    budget: f64,
    seed: u64,
    ppl: f64,
    edit: impl Fn(&mut RunConfig),
) -> RunSummaryFile {
    let mut config = RunConfig::default();
    edit(&mut config);
    config.train.seed = seed;
    let mut name: Vec<String> = labels.iter().map(|(_, v)| v.to_string()).collect();
    name.extend([format!("{budget:e}"), format!("s{seed}")]);
    let score = SetScore {
        protocol: "windows of 128".into(),
        documents: Some(10),
        tokens: 1000,
        bytes: Some(3500),
        loss: ppl.ln(),
        perplexity: ppl,
        bits_per_byte: None,
        last_word_accuracy: None,
    };
    RunSummaryFile {
        grid: grid.into(),
        name: name.join("-"),
        labels: labels.iter().map(|(a, v)| (a.to_string(), v.to_string())).collect(),
        budget,
        seed,
        steps: 100,
        tokens_per_step: 1024,
        flops_per_token: budget / 102_400.0,
        train_flops: budget,
        params: 1_000_000 * config.model.d_model / 64,
        train_set_tokens: 2_000_000,
        epochs: budget / 2e13,
        final_train_loss: Some(6.0),
        train_seconds: 60.0,
        tokens_per_second: 1000.0,
        eval: BTreeMap::from([("c4".to_string(), score)]),
        usage: Vec::new(),
        machine: "Test CPU, 2 threads".into(),
        date: "2026-12-01".into(),
        config,
    }
}

fn method(ffw: FfwKind, d_model: usize) -> impl Fn(&mut RunConfig) {
    move |c| {
        c.model.ffw = ffw;
        c.model.d_model = d_model;
    }
}

fn ffw_name(ffw: FfwKind) -> &'static str {
    match ffw {
        FfwKind::Dense => "dense",
        FfwKind::Moe => "moe",
        FfwKind::Pkm => "pkm",
        FfwKind::Peer => "peer",
    }
}

/// The isoFLOP runs: at 3e12 three seeds each (1337 in `isoflop`, 1 and 2 in `isoflop-seeds`); at 1e12
/// one seed, where PEER's best size is the smaller one and MoE beats PEER.
fn isoflop_runs() -> Vec<RunSummaryFile> {
    isoflop_base_runs().into_iter().map(with_other_sets).collect()
}

/// At 3e12, LAMBADA and WikiText scores beside C4.
fn with_other_sets(mut run: RunSummaryFile) -> RunSummaryFile {
    if run.budget == 3e12 {
        for (set, offset) in [("wikitext", 10.0), ("lambada", 30.0)] {
            let mut score = run.eval["c4"].clone();
            score.perplexity += offset;
            run.eval.insert(set.to_string(), score);
        }
    }
    run
}

fn isoflop_base_runs() -> Vec<RunSummaryFile> {
    let at_3e12 = [
        (FfwKind::Dense, [150.0, 151.0, 152.0]),
        (FfwKind::Moe, [120.0, 121.0, 122.0]),
        (FfwKind::Pkm, [109.0, 111.0, 113.0]),
        (FfwKind::Peer, [100.0, 104.0, 108.0]),
    ];
    let at_1e12 = [
        (FfwKind::Dense, 200.0, 230.0),
        (FfwKind::Moe, 190.0, 231.0),
        (FfwKind::Pkm, 195.0, 232.0),
        (FfwKind::Peer, 210.0, 198.0),
    ];
    let mut runs = Vec::new();
    for (ffw, ppls) in at_3e12 {
        for (seed, ppl) in [1337, 1, 2].into_iter().zip(ppls) {
            let grid = if seed == 1337 { "isoflop" } else { "isoflop-seeds" };
            runs.push(summary(grid, &[("method", ffw_name(ffw)), ("size", "d128")], 3e12, seed, ppl, method(ffw, 128)));
            runs.push(summary(
                grid,
                &[("method", ffw_name(ffw)), ("size", "d64")],
                3e12,
                seed,
                ppl + 20.0,
                method(ffw, 64),
            ));
        }
    }
    for (ffw, d128, d64) in at_1e12 {
        runs.push(summary(
            "isoflop",
            &[("method", ffw_name(ffw)), ("size", "d128")],
            1e12,
            1337,
            d128,
            method(ffw, 128),
        ));
        runs.push(summary("isoflop", &[("method", ffw_name(ffw)), ("size", "d64")], 1e12, 1337, d64, method(ffw, 64)));
    }
    // A wider dense model, worse than d128: the dense curve at 1e12 has its minimum inside.
    runs.push(summary(
        "isoflop",
        &[("method", "dense"), ("size", "d256")],
        1e12,
        1337,
        260.0,
        method(FfwKind::Dense, 256),
    ));
    runs
}

fn with_usage(mut run: RunSummaryFile, kl: f64) -> RunSummaryFile {
    run.usage =
        vec![UsageScore { block: 2, fraction_used: 0.5, kl_from_uniform: kl, selection_kl_from_uniform: kl + 0.25 }];
    run
}

fn peer(n: usize, h: usize, k: usize, bn: Option<bool>) -> impl Fn(&mut RunConfig) {
    move |c| {
        c.model.ffw = FfwKind::Peer;
        (c.model.peer.num_experts, c.model.peer.keys.heads, c.model.peer.keys.top_k) = (n, h, k);
        c.model.peer.keys.query_batch_norm = bn.is_some();
        c.model.peer.query_bn_per_head = bn == Some(true);
    }
}

/// Tuning (PEER with fewer runs than the others), experts, active and bn grids.
fn ablation_runs() -> Vec<RunSummaryFile> {
    let mut runs = Vec::new();
    for (grid, count) in [("tune-dense", 3), ("tune-moe", 3), ("tune-pkm", 3), ("tune-peer", 2)] {
        for i in 0..count {
            let lr = format!("lr{i}");
            let run = summary(grid, &[("lr", lr.as_str())], 1e12, 1337, 300.0 - i as f64, |c| {
                c.train.lr = 0.001 * (i + 1) as f32
            });
            runs.push(run);
        }
    }
    // A second width of dense tuning, worse than every run of the first: still the best of its own width.
    runs.push(summary("tune-dense", &[("lr", "lr9")], 1e12, 1337, 310.0, |c| c.model.d_model /= 2));
    for (label, n, ppl) in [("n32", 1024, 150.0), ("n64", 4096, 140.0), ("n128", 16384, 135.0)] {
        runs.push(with_usage(summary("experts", &[("n", label)], 1e12, 1337, ppl, peer(n, 4, 4, Some(false))), 1.0));
    }
    let active = [("h1", "k4", 1, 4, 150.0), ("h1", "k16", 1, 16, 140.0), ("h1", "k64", 1, 64, 137.0)];
    let active_h4 = [("h4", "k1", 4, 1, 148.0), ("h4", "k4", 4, 4, 141.0), ("h4", "k16", 4, 16, 140.5)];
    for (split, hk, h, k, ppl) in active.into_iter().chain(active_h4) {
        runs.push(summary("active", &[("split", split), ("hk", hk)], 1e12, 1337, ppl, peer(16384, h, k, Some(false))));
    }
    for (label, bn, kl) in [("bn-off", None, 1.5), ("bn-pooled", Some(false), 1.0), ("bn-head", Some(true), 0.9)] {
        runs.push(with_usage(summary("bn", &[("bn", label)], 1e12, 1337, 140.0, peer(4096, 4, 4, bn)), kl));
    }
    runs
}

fn write_summaries(dir: &Path, runs: &[RunSummaryFile]) {
    let _ = std::fs::remove_dir_all(dir);
    for run in runs {
        let path = dir.join(&run.grid).join(format!("{}.json", run.name));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        run.save(&path).unwrap();
    }
}

fn temp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Runs `peerlm report` on `summaries`, writing `<dir>/docs/REPRODUCTION.md`, with `<dir>/specs` as the
/// spec directory.
fn report(summaries: &Path, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerlm"))
        .arg("report")
        .arg("--summaries")
        .arg(summaries)
        .arg("--out")
        .arg(dir.join("docs/REPRODUCTION.md"))
        .arg("--specs")
        .arg(dir.join("specs"))
        .output()
        .unwrap()
}

fn report_text(summaries: &Path, dir: &Path) -> String {
    let output = report(summaries, dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::read_to_string(dir.join("docs/REPRODUCTION.md")).unwrap()
}

/// The lines of `text` from the heading `start` to the next `## ` heading.
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("no section {start}"));
    let rest = &text[from + start.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn seed_statistics_on_a_hand_computed_example() {
    // 100, 104, 108: mean 104, deviations -4, 0, 4, sample variance 32 / 2 = 16.
    let s = Spread::of(&[100.0, 108.0, 104.0]).unwrap();
    assert_eq!((s.n, s.mean, s.min, s.max, s.std), (3, 104.0, 100.0, 108.0, Some(4.0)));
    assert_eq!(s.range(), Some(8.0));
    let one = Spread::of(&[7.0]).unwrap();
    assert_eq!((one.std, one.range()), (None, None));
    assert!(Spread::of(&[]).is_none());
}

#[test]
fn runs_differing_only_in_seed_are_one_point() {
    let runs = isoflop_runs();
    let refs: Vec<&RunSummaryFile> = runs.iter().collect();
    let points = study::aggregate(&refs);
    // 4 methods × 2 sizes × 2 budgets, and a third dense size at 1e12; the seeds of 3e12 fold into their points.
    assert_eq!(points.len(), 17);
    let peer = points.iter().find(|p| p.budget == 3e12 && p.method() == "peer" && p.label("size") == "d128").unwrap();
    assert_eq!(peer.seeds, vec![1337, 1, 2]);
    assert_eq!(peer.runs[1], "isoflop-seeds/peer-d128-3e12-s1");
    let c4 = peer.perplexity("c4").unwrap();
    assert_eq!((c4.mean, c4.min, c4.max, c4.std), (104.0, 100.0, 108.0, Some(4.0)));
    // Another learning rate is another point, even at the same seed and budget.
    let mut other_lr = runs[0].clone();
    other_lr.config.train.lr *= 2.0;
    assert_eq!(study::aggregate(&[&runs[0], &other_lr]).len(), 2);
}

#[test]
fn one_config_on_two_axes_is_two_points_and_a_replica_is_not_a_second_seed() {
    // h = 4, k = 8 lies on both splits of the active grid: the same config, trained once on each split.
    let on_h4 = summary("active", &[("split", "h4"), ("hk", "hk32")], 1e12, 1337, 140.0, peer(16384, 4, 8, None));
    let on_k8 = summary("active", &[("split", "k8"), ("hk", "hk32")], 1e12, 1337, 140.0, peer(16384, 4, 8, None));
    let points = study::aggregate(&[&on_h4, &on_k8]);
    assert_eq!(points.len(), 2);
    assert!(points.iter().all(|p| p.seeds == vec![1337]));
    // The same run twice (a replica at the same seed) is one seed, not two with zero spread.
    let points = study::aggregate(&[&on_h4, &on_h4.clone()]);
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].seeds, vec![1337]);
    assert_eq!(points[0].perplexity("c4").unwrap().std, None);
}

#[test]
fn saturation_is_judged_only_on_gains() {
    // Drops of 40 then 10, and of 10 then 30.
    assert_eq!(study::saturates(&[510.0, 470.0, 440.0, 430.0]), Some(true));
    assert_eq!(study::saturates(&[510.0, 500.0, 470.0]), Some(false));
    // Rising from the first step (losses that grow are not shrinking gains), and too few points.
    assert_eq!(study::saturates(&[438.7, 440.4, 446.4, 453.6]), None);
    assert_eq!(study::saturates(&[510.0, 470.0]), None);
}

#[test]
fn best_size_per_method_and_budget() {
    let runs = isoflop_runs();
    let points = study::aggregate(&runs.iter().collect::<Vec<_>>());
    let best = study::best_per_budget(&points, "c4");
    assert_eq!(best.iter().map(|b| b.budget).collect::<Vec<_>>(), vec![1e12, 3e12]);
    // At 1e12 PEER's smaller model (198) beats its larger one (210); everywhere else d128 wins.
    assert_eq!(best[0].best["peer"].label("size"), "d64");
    assert_eq!(best[0].best["dense"].label("size"), "d128");
    assert!(best[1].best.values().all(|p| p.label("size") == "d128"));
    assert_eq!(study::paper_order_holds(&best[0].best, "c4"), Ok(false));
    assert_eq!(study::paper_order_holds(&best[1].best, "c4"), Ok(true));
    let mut no_pkm = best[1].best.clone();
    no_pkm.remove("pkm");
    assert_eq!(study::paper_order_holds(&no_pkm, "c4"), Err(vec!["pkm".to_string()]));
}

#[test]
fn a_gap_counts_only_beyond_the_seed_spread() {
    let spread = |v: &[f64]| Spread::of(v).unwrap();
    // Ranges 8 and 2: a gap of 17 exceeds 8, a gap of 7 (PKM's 111 against 104) does not.
    let peer = spread(&[100.0, 104.0, 108.0]);
    assert_eq!(Comparison::of(&peer, &spread(&[120.0, 121.0, 122.0])).exceeds_spread(), Some(true));
    let pkm = Comparison::of(&peer, &spread(&[109.0, 111.0, 113.0]));
    assert_eq!((pkm.gap, pkm.spread, pkm.exceeds_spread()), (7.0, Some(8.0), Some(false)));
    assert_eq!(Comparison::of(&peer, &spread(&[200.0])).exceeds_spread(), None);
}

#[test]
fn report_tables_verdicts_and_figures() {
    let dir = temp("report_full");
    let summaries = dir.join("runs");
    let fixed_lr = vec![
        summary(
            "isoflop-fixed-lr",
            &[("method", "dense"), ("size", "d64")],
            1e12,
            1337,
            300.0,
            method(FfwKind::Dense, 64),
        ),
        summary(
            "isoflop-fixed-lr",
            &[("method", "dense"), ("size", "d128")],
            1e12,
            1337,
            250.0,
            method(FfwKind::Dense, 128),
        ),
        summary(
            "isoflop-fixed-lr",
            &[("method", "peer"), ("size", "d128")],
            1e12,
            1337,
            260.0,
            method(FfwKind::Peer, 128),
        ),
    ];
    write_summaries(&summaries, &[isoflop_runs(), ablation_runs(), fixed_lr].concat());
    std::fs::create_dir_all(dir.join("specs")).unwrap();
    let spec = r#"{"base": {}, "grids": [{"name": "isoflop", "axes": [], "budgets": [1e12]}]}"#;
    std::fs::write(dir.join("specs/iso.json"), spec).unwrap();
    let text = report_text(&summaries, &dir);

    let table1 = section(&text, "## Table 1");
    assert!(table1.contains("| 3e12 | 151.00 ± 1.00 (150.00–152.00) (d128, 3 seeds) |"), "{table1}");
    assert!(table1.contains("104.00 ± 4.00 (100.00–108.00) (d128, 3 seeds) |"), "{table1}");
    assert!(table1.contains("| 198.00 (d64, 1 seed) |"), "{table1}");
    assert!(table1.contains("- **3e12**: PEER 104.00 < PKM 111.00 < MoE 121.00 < dense 151.00; the paper's ordering PEER < MoE/PKM < dense holds"));
    assert!(table1.contains("- **1e12**: MoE 190.00 < PKM 195.00 < PEER 198.00 < dense 200.00; the paper's ordering PEER < MoE/PKM < dense does not hold"));
    assert!(table1.contains("| 3e12 | MoE vs PEER | -17.00 | 8.00 | PEER better |"), "{table1}");
    assert!(table1.contains("| 3e12 | PKM vs PEER | -7.00 | 8.00 | within seed spread |"), "{table1}");
    assert!(table1.contains("| 1e12 | dense vs PEER | -2.00 | unknown | PEER lower; seed spread unknown (one seed) |"));
    assert!(table1.contains("The same models (chosen on C4) on `wikitext`:"));
    assert!(table1.contains("- **1e12**: dense d128 (inside the range: a visible minimum); MoE d128 (the largest of 2 sizes: no visible minimum)"), "{table1}");
    assert!(table1.contains("PEER d64 (the smallest of 2 sizes: no visible minimum)."), "{table1}");
    assert!(table1.contains("| 3e12 | 161.00 ± 1.00 (160.00–162.00) (d128, 3 seeds) |"), "{table1}");
    assert!(table1.contains("| 1e12 | — | — | — | — |"), "{table1}");
    assert!(
        table1.contains("| lr | table lr | seeds | epochs | FFW | head | c4 ppl | wikitext ppl | lambada ppl |"),
        "{table1}"
    );
    assert!(text.contains(&format!("peerlm sweep --spec {} --out runs/study", dir.join("specs/iso.json").display())));

    let fixed_lr = section(&text, "## Table 1 with one learning rate per method at every width");
    assert!(fixed_lr.contains("- **1e12**: dense 250.00 < PEER 260.00;"), "{fixed_lr}");
    assert!(fixed_lr.contains("dense d128 (the largest of 2 sizes: no visible minimum)"), "{fixed_lr}");
    assert!(!table1.contains("250.00"), "the fixed-lr grid stays out of Table 1: {table1}");

    let tuning = section(&text, "## Tuning");
    assert!(tuning.contains(
        "did not get the same number of tuning runs: `tune-dense` 4, `tune-moe` 3, `tune-pkm` 3, `tune-peer` 2"
    ));
    assert!(tuning.contains("| **best** | `lr2-1e12-s1337` |"), "{tuning}");
    assert!(tuning.contains("| **best** | `lr9-1e12-s1337` | d"), "{tuning}");
    assert_eq!(tuning.matches("**best**").count(), 5, "one per width of each grid: {tuning}");
    assert!(text.contains("Every grid of the study has summaries, as many as its spec plans."));

    let paper = section(&text, "## Comparison with the paper");
    assert!(paper.contains(
        "dense 23.84, MoE 21.41 (10.2% below dense), PKM 21.92 (8.1% below dense), PEER 20.63 (13.5% below dense)"
    ));
    assert!(paper.contains("at the largest budget with all four curves complete (Table 1, row 3e12): dense 151.00, MoE 121.00 (19.9% below dense), PKM 111.00 (26.5% below dense), PEER 104.00 (31.1% below dense). The paper's ordering PEER < MoE/PKM < dense held on the means (it held at 1 of the 2 budgets judged); PEER against dense: PEER better."), "{paper}");
    assert!(paper.contains(
        "perplexity fell at every step, from 150.00 at N = 1,024 (32²) to 135.00 at N = 16,384 (128²) (held)"
    ));
    assert!(
        paper.contains("split `h1`: perplexity fell at every step")
            && paper.contains("the gains shrank (saturation held)")
    );
    assert!(
        paper.contains("PEER d128 (2,000,000 parameters): head ")
            && paper.contains("feed-forward ")
            && paper.contains("0.15 epochs"),
        "{paper}"
    );
    assert!(paper.contains("1.500 → 1.000 with pooled query BN (lower: held; Table 2, rows `bn-off` and `bn-pooled`)"));
    assert!(paper.contains("1.500 → 0.900 with per head query BN"));

    for figure in ["isoflop.svg", "experts.svg", "active.svg"] {
        let svg = std::fs::read_to_string(dir.join("docs/reproduction").join(figure)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{figure}");
        assert!(text.contains(&format!("(reproduction/{figure})")));
    }
    let isoflop = std::fs::read_to_string(dir.join("docs/reproduction/isoflop.svg")).unwrap();
    assert!(isoflop.contains("PEER 3e12") && isoflop.contains("total parameters"));
}

#[test]
fn every_perplexity_in_table_1_comes_from_the_data() {
    let dir = temp("report_provenance");
    let summaries = dir.join("runs");
    let runs = isoflop_runs();
    write_summaries(&summaries, &runs);
    let text = report_text(&summaries, &dir);
    // Every value a cell may show: each point's mean, std, min and max, computed here from the raw runs.
    let mut allowed: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.eval["c4"].perplexity)).collect();
    let points = study::aggregate(&runs.iter().collect::<Vec<_>>());
    for s in points.iter().filter_map(|p| p.perplexity("c4")) {
        allowed.extend([s.mean, s.std.unwrap_or(s.mean)].map(|v| format!("{v:.2}")));
    }
    let table: Vec<&str> = section(&text, "## Table 1")
        .lines()
        .filter(|l| l.starts_with("| 1e12") || l.starts_with("| 3e12"))
        .take(2)
        .collect();
    assert_eq!(table.len(), 2);
    let numbers: Vec<&str> = table
        .iter()
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_digit() || c == '.')))
        .filter(|t| t.contains('.'))
        .collect();
    // One number in each one-seed cell of 1e12, four (mean, sd, min, max) in each three-seed cell of 3e12.
    assert_eq!(numbers.len(), 4 + 4 * 4, "{table:?}");
    for number in numbers {
        assert!(allowed.iter().any(|a| a == number), "{number} is not a figure of the data");
    }
}

#[test]
fn missing_grids_are_named_and_not_drawn() {
    let dir = temp("report_missing");
    let summaries = dir.join("runs");
    let tuning: Vec<RunSummaryFile> = ablation_runs().into_iter().filter(|r| r.grid == "tune-dense").collect();
    write_summaries(&summaries, &tuning);
    let _ = std::fs::remove_dir_all(dir.join("docs"));
    let text = report_text(&summaries, &dir);
    let missing = section(&text, "## What is missing");
    for grid in ["tune-moe", "tune-pkm", "tune-peer", "isoflop", "isoflop-seeds", "experts", "active", "bn"] {
        assert!(missing.contains(&format!("- `{grid}` (")), "{grid} missing from {missing}");
    }
    assert!(!missing.contains("`tune-dense`"));
    assert!(section(&text, "## Table 1").contains("Not run yet"));
    assert!(section(&text, "## Comparison with the paper").contains("Here: not run yet"));
    assert!(text.contains("# no spec under"));
    assert!(!dir.join("docs/reproduction/isoflop.svg").exists());
}

/// A curve whose spec plans sizes not run yet may still move its best size: Table 1 marks it, its budget
/// is not judged against the paper, and a single ablation point is not called a trend.
#[test]
fn unfinished_curves_are_marked_and_not_judged() {
    let dir = temp("report_unfinished");
    let summaries = dir.join("runs");
    let one_experts_point = ablation_runs().into_iter().find(|r| r.grid == "experts").unwrap();
    write_summaries(&summaries, &[isoflop_runs(), vec![one_experts_point]].concat());
    std::fs::create_dir_all(dir.join("specs")).unwrap();
    let size = |d: usize| format!(r#"{{"name": "d{d}", "patch": {{"model": {{"d_model": {d}}}}}}}"#);
    let spec = format!(
        r#"{{"base": {{}}, "grids": [{{"name": "isoflop", "axes": [
            {{"name": "method", "values": [{{"name": "peer", "patch": {{"model": {{"ffw": "peer"}}}}}}]}},
            {{"name": "size", "values": [{}, {}, {}]}}], "budgets": [3e12]}}]}}"#,
        size(64),
        size(128),
        size(256)
    );
    std::fs::write(dir.join("specs/iso.json"), spec).unwrap();
    let text = report_text(&summaries, &dir);

    let table1 = section(&text, "## Table 1");
    assert!(table1.contains("| 104.00 ± 4.00 (100.00–108.00) (d128, 3 seeds, 2 of 3 sizes run) |"), "{table1}");
    assert!(table1.contains("| 151.00 ± 1.00 (150.00–152.00) (d128, 3 seeds) |"), "{table1}");
    assert!(
        table1.contains("the paper's ordering cannot be judged yet: curves not complete (PEER 2 of 3 sizes)"),
        "{table1}"
    );
    assert!(table1.contains("PEER d128 (2 of 3 sizes run: not known yet)"), "{table1}");
    let paper = section(&text, "## Comparison with the paper");
    assert!(paper.contains("at the largest budget with all four curves complete (Table 1, row 1e12)"), "{paper}");
    assert!(paper.contains("(it held at 0 of the 1 budgets judged)"), "{paper}");
    assert!(paper.contains("Not judged: 3e12 (not every method's curve is complete, see Table 1)."), "{paper}");
    assert!(paper.contains("one point only, 150.00 at N = 1,024 (32²): no trend to judge yet"), "{paper}");
}

#[test]
fn regenerating_gives_identical_files() {
    let dir = temp("report_twice");
    let summaries = dir.join("runs");
    write_summaries(&summaries, &[isoflop_runs(), ablation_runs()].concat());
    let read_all = |dir: &Path| -> Vec<Vec<u8>> {
        ["REPRODUCTION.md", "reproduction/isoflop.svg", "reproduction/experts.svg", "reproduction/active.svg"]
            .map(|f| std::fs::read(dir.join("docs").join(f)).unwrap())
            .to_vec()
    };
    report_text(&summaries, &dir);
    let first = read_all(&dir);
    report_text(&summaries, &dir);
    assert!(first == read_all(&dir));
}

#[test]
fn bad_input_is_one_error_line_naming_the_file() {
    let dir = temp("report_bad");
    let output = report(&dir.join("no-such-dir"), &dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no-such-dir") && !stderr.contains("panicked"), "{stderr}");
    let summaries = dir.join("runs");
    write_summaries(&summaries, &ablation_runs()[..1]);
    let moved = summaries.join("tune-moe/x.json");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::copy(summaries.join("tune-dense/lr0-1e12-s1337.json"), &moved).unwrap();
    let stderr = String::from_utf8_lossy(&report(&summaries, &dir).stderr).into_owned();
    assert!(
        stderr.contains("x.json") && stderr.contains("grid tune-dense in the directory of grid tune-moe"),
        "{stderr}"
    );
    std::fs::write(&moved, "{\"grid\":").unwrap();
    let stderr = String::from_utf8_lossy(&report(&summaries, &dir).stderr).into_owned();
    assert!(stderr.contains("x.json") && stderr.trim_end().lines().count() == 1, "{stderr}");
}
