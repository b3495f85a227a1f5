//! The sweep runner on a micro grid: a spec expands into named runs whose steps spend their budgets, a
//! run resumes to the same bits as one that never stopped, a finished run is skipped, and a directory
//! holding another config than the spec's is refused.

use std::path::{Path, PathBuf};

use peerlm::checkpoint::Checkpoint;
use peerlm::data::{shard, DocumentReader, TokenDataset, Tokenizer};
use peerlm::model::{flops, FfwKind};
use peerlm::sweep::{self, merge_patch, EvalSet, PlannedRun, RunState, SweepData, SweepSpec};
use peerlm::train::{RunOptions, Trainer};
use serde_json::json;

const VOCAB: usize = 300;

fn spec(grids: serde_json::Value) -> SweepSpec {
    let base = json!({
        "model": {"vocab_size": VOCAB, "seq_len": 16, "d_model": 16, "n_layers": 2, "n_heads": 2,
                  "dense": {"d_ff": 32},
                  "peer": {"num_experts": 64, "heads": 2, "top_k": 2, "key_dim": 8}},
        "train": {"batch_size": 2, "warmup_steps": 2, "eval_every": 0, "eval_batches": 2, "checkpoint_every": 0}
    });
    serde_json::from_value(json!({"base": base, "grids": grids})).unwrap()
}

fn methods_by_sizes(budgets: &[f64], seeds: &[u64]) -> serde_json::Value {
    json!([{
        "name": "grid",
        "axes": [
            {"name": "method", "values": [{"name": "dense", "patch": {"model": {"ffw": "dense"}}},
                                          {"name": "peer", "patch": {"model": {"ffw": "peer"}}}]},
            {"name": "size", "values": [{"name": "d16", "patch": {}},
                                        {"name": "d24", "patch": {"model": {"d_model": 24, "n_heads": 3}}}]}
        ],
        "budgets": budgets,
        "seeds": seeds
    }])
}

#[test]
fn a_spec_expands_into_named_runs_that_spend_their_budgets() {
    let runs = spec(methods_by_sizes(&[1e8, 3e8], &[1, 2])).plan().unwrap();
    assert_eq!(runs.len(), 2 * 2 * 2 * 2);
    assert_eq!(runs[0].id(), "grid/dense-d16-1e8-s1");
    assert_eq!(runs[15].id(), "grid/peer-d24-3e8-s2");
    for run in &runs {
        let model = &run.config.model;
        assert_eq!(model.ffw == FfwKind::Peer, run.name.starts_with("peer"), "{}", run.id());
        assert_eq!(model.d_model, if run.name.contains("d24") { 24 } else { 16 });
        assert_eq!(model.peer.keys.d_model, model.d_model, "{}: d_model reaches the layer sections", run.id());
        assert_eq!(run.config.train.seed, run.seed);
        let per_step = flops::train_flops_per_token(model) * run.tokens_per_step() as f64;
        assert!((run.train_flops() - run.budget).abs() <= per_step / 2.0, "{}", run.id());
    }
}

#[test]
fn a_bad_grid_is_refused_naming_the_run() {
    let mut grids = methods_by_sizes(&[1e8], &[1]);
    grids[0]["axes"][1]["values"][1]["patch"] = json!({"model": {"d_model": 25}}); // 2 heads do not divide 25
    let error = spec(grids).plan().unwrap_err().to_string();
    assert!(error.starts_with("run grid/dense-d24-1e8-s1: model.n_heads"), "{error}");
    let twice =
        json!([{"name": "g", "axes": [{"name": "a", "values": [{"name": "x"}, {"name": "x"}]}], "budgets": [1e8]}]);
    assert!(spec(twice).plan().unwrap_err().to_string().contains("two runs"));
    let no_budget = json!([{"name": "g", "axes": [], "budgets": []}]);
    assert!(spec(no_budget).plan().unwrap_err().to_string().contains("budget"));
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
    merge_patch(&mut target, &json!({"a": "z", "c": {"f": null, "h": 1}, "list": [3]}));
    assert_eq!(target, json!({"a": "z", "c": {"d": "e", "h": 1}, "list": [3]}));
}

/// Token shards and a tokenizer from the first documents of the bundled sample.
fn data(dir: &Path) -> (Tokenizer, TokenDataset, TokenDataset) {
    let reader = DocumentReader::open(&[PathBuf::from("datasets/c4/c4-train.00000-of-00001.json.gz")], false).unwrap();
    let docs: Vec<String> = reader.take(40).map(|d| d.unwrap().text).collect();
    let tokenizer = Tokenizer::train(&docs[..30], VOCAB).unwrap();
    let (train_path, valid_path) = (dir.join("train_000.bin"), dir.join("valid_000.bin"));
    shard::write_shard(&train_path, VOCAB as u32, &tokenizer.encode_documents(&docs[..30])).unwrap();
    shard::write_shard(&valid_path, VOCAB as u32, &tokenizer.encode_documents(&docs[30..])).unwrap();
    let train = TokenDataset::open(&[train_path], 16).unwrap();
    let valid = TokenDataset::open(&[valid_path], 16).unwrap();
    (tokenizer, train, valid)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerlm-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PEER run of the micro grid at seed 1: a few steps.
fn peer_run() -> PlannedRun {
    let runs = spec(methods_by_sizes(&[1.5e8], &[1])).plan().unwrap();
    let run = runs.into_iter().find(|r| r.name.starts_with("peer-d16")).unwrap();
    assert!(run.config.train.steps >= 4, "{} steps", run.config.train.steps);
    run
}

#[test]
fn a_run_resumes_exactly_is_skipped_when_finished_and_refuses_another_config() {
    let root = temp_dir("resume");
    let (tokenizer, train, valid) = data(&root);
    let text = peerlm::data::tokenizer_file::to_text(&tokenizer);
    let held_out = |name: &str, lambada| EvalSet { name: name.into(), path: PathBuf::new(), lambada };
    let documents: Vec<String> =
        ["The cat sat on the mat.", "A second, longer document of text to score."].map(String::from).to_vec();
    let eval_sets = [(held_out("c4", false), documents.clone()), (held_out("lambada", true), documents)];
    let data =
        SweepData { train: &train, valid: &valid, tokenizer: &tokenizer, tokenizer_text: &text, eval_sets: &eval_sets };
    let run = peer_run();

    let straight = root.join("straight");
    let summary = sweep::execute(&run, &straight, &data, &RunOptions::new(&straight)).unwrap();
    assert_eq!(summary.steps, run.config.train.steps);
    assert!(summary.eval["c4"].perplexity.is_finite() && !summary.usage.is_empty());
    assert_eq!(summary.eval["c4"].documents, Some(2));
    assert!(summary.eval["c4"].last_word_accuracy.is_none() && summary.eval["lambada"].last_word_accuracy.is_some());

    // Interrupted half-way: the directory holds the config and a checkpoint of the first half.
    let interrupted = root.join("interrupted");
    let dir = sweep::start_run(&run, &interrupted).unwrap();
    let mut trainer = Trainer::new(run.config.clone()).unwrap();
    let batch_size = run.config.train.batch_size;
    for step in 0..run.config.train.steps / 2 {
        trainer.train_step(&train.train_batch(run.seed, step, batch_size)).unwrap();
    }
    trainer.to_checkpoint().save(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(sweep::run_state(&run, &interrupted).unwrap(), RunState::Started);
    let resumed = sweep::execute(&run, &interrupted, &data, &RunOptions::new(&interrupted)).unwrap();
    let weights = |out: &Path| Checkpoint::load(&run.dir(out).join("checkpoint.safetensors")).unwrap().tensors;
    assert_eq!(weights(&straight), weights(&interrupted), "resumed weights differ from a straight run");
    assert_eq!(resumed.eval, summary.eval);

    // Finished: executing again trains nothing and returns the summary on disk.
    let metrics = std::fs::read_to_string(run.dir(&straight).join("metrics.jsonl")).unwrap();
    assert_eq!(sweep::execute(&run, &straight, &data, &RunOptions::new(&straight)).unwrap(), summary);
    assert_eq!(std::fs::read_to_string(run.dir(&straight).join("metrics.jsonl")).unwrap(), metrics);

    // A set the summary lacks is scored from the checkpoint, without training.
    let mut partial = summary.clone();
    partial.eval.remove("lambada");
    partial.save(&run.dir(&straight).join("summary.json")).unwrap();
    assert_eq!(sweep::execute(&run, &straight, &data, &RunOptions::new(&straight)).unwrap(), summary);
    assert_eq!(std::fs::read_to_string(run.dir(&straight).join("metrics.jsonl")).unwrap(), metrics);

    // The spec changed under the same name: refused, the old run untouched.
    let mut edited = run.clone();
    edited.config.train.lr *= 2.0;
    let error = sweep::execute(&edited, &straight, &data, &RunOptions::new(&straight)).unwrap_err().to_string();
    assert!(error.contains("another config") && error.contains(&run.id()), "{error}");
    let _ = std::fs::remove_dir_all(&root);
}
