//! The memory estimate counts the parameters a model really has, for every kind of layer, and grows
//! with what a config asks for.

use peerlm::model::memory::{inference, param_count, training};
use peerlm::model::{FfwKind, Gpt, ModelConfig, Positions};

fn small(ffw: FfwKind) -> ModelConfig {
    let mut config = ModelConfig {
        vocab_size: 97,
        seq_len: 12,
        d_model: 16,
        n_layers: 3,
        n_heads: 2,
        ffw,
        ..ModelConfig::default()
    };
    config.dense.d_ff = 24;
    (config.moe.num_experts, config.moe.d_expert, config.moe.top_k) = (3, 8, 2);
    (config.pkm.sub_keys, config.pkm.keys.heads, config.pkm.keys.top_k, config.pkm.keys.key_dim) = (5, 2, 3, 6);
    (config.peer.num_experts, config.peer.keys.heads, config.peer.keys.top_k, config.peer.keys.key_dim) =
        (49, 3, 2, 10);
    config.propagate_d_model();
    config
}

#[test]
fn the_parameter_count_is_that_of_the_built_model() {
    for ffw in [FfwKind::Dense, FfwKind::Moe, FfwKind::Pkm, FfwKind::Peer] {
        for (tie, positions, batch_norm) in [(true, Positions::Learned, true), (false, Positions::Rotary, false)] {
            let mut config = small(ffw);
            (config.tie_embeddings, config.positions) = (tie, positions);
            (config.pkm.keys.query_batch_norm, config.peer.keys.query_batch_norm) = (batch_norm, batch_norm);
            config.ffw_blocks = (ffw != FfwKind::Dense).then(|| vec![0, 2]);
            config.validate().unwrap();
            let built = Gpt::<f32>::new(&config, 1).num_params();
            assert_eq!(param_count(&config), built as f64, "{ffw:?}, tied {tie}, {positions:?}");
        }
    }
}

#[test]
fn training_needs_more_than_inference_and_batches_cost_activations() {
    let config = small(FfwKind::Peer);
    let (train, infer) = (training(&config, 4), inference(&config, 4));
    assert_eq!(train.params, infer.params);
    assert!(train.total_bytes() > infer.total_bytes() && infer.total_bytes() > infer.param_bytes);
    assert!(training(&config, 8).activation_bytes > train.activation_bytes);
    let mut huge = config.clone();
    huge.peer.num_experts = 65_535 * 65_535;
    assert!(training(&huge, 4).total_bytes() > 1e12, "a trillion-byte config is seen as one");
}
