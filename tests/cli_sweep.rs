//! `peerlm sweep` as a user runs it on a micro grid: it prepares the spec's data once, lists one
//! self-contained command per run, runs every run to a summary, copies the summaries out, and on a
//! machine where only the committed summaries survive it trains nothing again.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use peerlm::sweep::RunSummaryFile;

const TRAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/c4/c4-train.00000-of-00001.json.gz");
const VALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/c4/c4-validation.00000-of-00001.json.gz");

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-sweep-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn peerlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerlm")).args(args).output().unwrap()
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two tiny runs (dense and PEER) at one budget, scored on one held-out set.
fn write_spec(dir: &Path) -> PathBuf {
    let spec = serde_json::json!({
        "data": {"train": [TRAIN], "valid": [VALID]},
        "eval": [{"name": "c4", "path": VALID}],
        "base": {"model": {"vocab_size": 300, "seq_len": 16, "d_model": 16, "n_layers": 2, "n_heads": 2,
                           "dense": {"d_ff": 32}, "peer": {"num_experts": 64, "heads": 2, "top_k": 2, "key_dim": 8}},
                 "train": {"batch_size": 2, "warmup_steps": 2, "eval_every": 0, "eval_batches": 2}},
        "grids": [{"name": "micro",
                   "axes": [{"name": "method", "values": [{"name": "dense", "patch": {"model": {"ffw": "dense"}}},
                                                          {"name": "peer", "patch": {"model": {"ffw": "peer"}}}]}],
                   "budgets": [3e7]}]
    });
    let path = dir.join("micro.json");
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

#[test]
fn a_sweep_lists_runs_trains_them_and_adopts_committed_summaries() {
    let dir = tmp("micro");
    let spec = write_spec(&dir);
    let (out, summaries) = (dir.join("out"), dir.join("summaries"));
    let base = [
        "sweep",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--summaries",
        summaries.to_str().unwrap(),
    ];

    let listed = succeeded(&peerlm(&[&base[..], &["--list"]].concat()));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let expected = format!("--run micro/peer-3e7-s1337 --summaries {}", summaries.display());
    assert!(lines[1].ends_with(&expected), "{listed}");
    assert!(!out.exists(), "--list ran something");

    succeeded(&peerlm(&base));
    let summary_path = summaries.join("micro/peer-3e7-s1337.json");
    let summary = RunSummaryFile::load(&summary_path).unwrap();
    assert!(summary.eval["c4"].perplexity.is_finite() && !summary.usage.is_empty());
    assert!(out.join("data/tokenizer.bpe").exists() && out.join("micro/dense-3e7-s1337/summary.json").exists());

    // A new machine: the run directories are gone, the committed summaries are not. One of them is in
    // another layout (keys sorted, on one line) with the same content: the sweep leaves its bytes alone.
    std::fs::remove_dir_all(&out).unwrap();
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let relaid = serde_json::to_string(&value).unwrap();
    std::fs::write(&summary_path, &relaid).unwrap();
    succeeded(&peerlm(&base));
    assert_eq!(std::fs::read_to_string(&summary_path).unwrap(), relaid, "an unchanged summary was rewritten");
    assert!(!out.join("micro/peer-3e7-s1337/metrics.jsonl").exists(), "a committed run was trained again");
    assert_eq!(RunSummaryFile::load(&out.join("micro/peer-3e7-s1337/summary.json")).unwrap(), summary);

    // One run by name, as a scheduler would start it.
    let unknown = peerlm(&[&base[..], &["--run", "micro/nope"]].concat());
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("micro/nope"));
    let _ = std::fs::remove_dir_all(&dir);
}
