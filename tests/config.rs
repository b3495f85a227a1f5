//! Config files a careless hand wrote: every impossible value is refused with a message naming the field,
//! and a number that would overflow or mean nothing is never accepted.

use std::path::PathBuf;

use peerlm::train::{self, RunConfig};

/// Loads `json` as a config file; the error message, or "" if it loads.
fn load(name: &str, json: &str) -> String {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config-{name}.json"));
    std::fs::write(&path, json).unwrap();
    RunConfig::load(&path).err().map_or(String::new(), |e| e.to_string())
}

#[test]
fn numbers_that_overflow_or_make_no_sense_are_refused() {
    let cases = [
        ("lr", r#"{"train": {"lr": 1e39}}"#, "train.lr: inf"),
        ("table_lr", r#"{"train": {"table_lr": -1e-3}}"#, "train.table_lr"),
        ("weight_decay", r#"{"train": {"weight_decay": -0.1}}"#, "train.weight_decay: -0.1"),
        ("empty_blocks", r#"{"model": {"ffw": "peer", "ffw_blocks": []}}"#, "ffw_blocks: empty"),
        ("twice", r#"{"model": {"ffw": "peer", "ffw_blocks": [1, 1]}}"#, "ffw_blocks: block 1 is listed twice"),
        ("layers", r#"{"model": {"n_layers": 100000000000}}"#, "n_layers"),
    ];
    for (name, json, expected) in cases {
        let message = load(name, json);
        assert!(!message.is_empty(), "{name}: {json} was accepted");
        assert!(message.contains(expected), "{name}: {message}");
    }
}

#[test]
fn a_layer_section_may_leave_out_d_model_but_not_contradict_it() {
    let absent = r#"{"model": {"d_model": 64, "dense": {"d_ff": 128}}}"#;
    assert_eq!(load("absent", absent), "");
    let contradicting = r#"{"model": {"d_model": 64, "peer": {"d_model": 32, "num_experts": 16, "heads": 1,
        "top_k": 2, "key_dim": 8}, "ffw": "peer"}}"#;
    let message = load("contradicting", contradicting);
    assert!(message.contains("model.peer.d_model: 32 differs from model.d_model = 64"), "{message}");
}

#[test]
fn a_flop_budget_must_buy_a_whole_number_of_steps() {
    let config = RunConfig::default();
    for budget in [0.0, -1e14, f64::NAN, f64::INFINITY, 1.0, 1e40] {
        assert!(train::steps_for_flops(&config, budget).is_err(), "--flops {budget} was accepted");
    }
    let steps = train::steps_for_flops(&config, 1e15).unwrap();
    let twice = train::steps_for_flops(&config, 2e15).unwrap();
    assert!(steps > 0 && twice.abs_diff(2 * steps) <= 1, "{steps} then {twice}");
}

/// Every config the project has committed, read by this build: the run configs, each run the study specs
/// plan, and the configs embedded in the study's run summaries. Each must read back into the same value
/// (no field lost or renamed: `model.peer` and `model.pkm` write their product-key fields inline), and a
/// summary's config must serialise to exactly the JSON it was committed with, so that the models it
/// describes are built the same way.
#[test]
fn committed_configs_and_run_summaries_round_trip() {
    use peerlm::sweep::SweepSpec;
    use serde_json::Value;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let round_trip = |config: &RunConfig, what: &str| {
        let text = serde_json::to_string(config).unwrap();
        assert_eq!(&serde_json::from_str::<RunConfig>(&text).unwrap(), config, "{what}");
    };
    for name in ["peer-tiny", "dense-tiny"] {
        let path = root.join(format!("configs/{name}.json"));
        round_trip(&RunConfig::load(&path).unwrap(), name);
    }
    let mut planned = 0;
    for entry in std::fs::read_dir(root.join("configs/study")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for run in SweepSpec::load(&path).unwrap().plan().unwrap() {
                round_trip(&run.config, &run.id());
                planned += 1;
            }
        }
    }
    assert!(planned > 0, "no study runs planned");

    let mut summaries = vec![root.join("docs/reproduction/runs")];
    let mut read = 0;
    while let Some(path) = summaries.pop() {
        if path.is_dir() {
            summaries.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
            continue;
        }
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let committed = &summary["config"];
        let config: RunConfig = serde_json::from_value(committed.clone()).unwrap();
        config.validate().unwrap();
        // Through text, as the summary was written: an f32 field prints as its shortest decimal.
        let written: Value = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(&written, committed, "{}", path.display());
        read += 1;
    }
    assert!(read > 0, "no run summaries found");
}
