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
