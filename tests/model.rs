//! The GPT decoder end to end: causality, the key/value cache, config validation and FLOP counting.

use peerlm::model::{FfwKind, Gpt, ModelConfig, Positions};
use peerlm::nn::Module;
use peerlm::nn::Routing;
use peerlm::Tape;

fn tiny(ffw: FfwKind) -> ModelConfig {
    tiny_with(ffw, Positions::Learned)
}

fn tiny_with(ffw: FfwKind, positions: Positions) -> ModelConfig {
    let mut config = ModelConfig {
        vocab_size: 37,
        seq_len: 12,
        d_model: 16,
        n_layers: 3,
        n_heads: 2,
        ffw,
        positions,
        ..ModelConfig::default()
    };
    config.dense.d_ff = 32;
    config.moe.num_experts = 4;
    config.moe.d_expert = 8;
    config.moe.top_k = 2;
    config.pkm.sub_keys = 4;
    config.pkm.keys.heads = 2;
    config.pkm.keys.top_k = 2;
    config.pkm.keys.key_dim = 8;
    config.peer.num_experts = 16;
    config.peer.keys.heads = 2;
    config.peer.keys.top_k = 2;
    config.peer.keys.key_dim = 8;
    config.propagate_d_model();
    config.validate().unwrap();
    config
}

fn logits(model: &mut Gpt<f64>, tokens: &[u32], batch: usize) -> Vec<f64> {
    let mut tape = Tape::no_grad();
    model.forward(&mut tape, tokens, batch, false).logits.value().data().to_vec()
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    let kinds = [FfwKind::Dense, FfwKind::Moe, FfwKind::Pkm, FfwKind::Peer].map(tiny);
    // Expert choice (the default MoE) routes over the batch in training; evaluation must not.
    assert_eq!(kinds[1].moe.routing, Routing::ExpertChoice);
    let mut token_choice = tiny(FfwKind::Moe);
    token_choice.moe.routing = Routing::TokenChoice;
    for config in kinds.into_iter().chain([token_choice, tiny_with(FfwKind::Dense, Positions::Rotary)]) {
        let kind = config.ffw;
        let mut model = Gpt::<f64>::new(&config, 7);
        let tokens: Vec<u32> = (0..10).map(|i| (i * 7 % 37) as u32).collect();
        let base = logits(&mut model, &tokens, 1);
        for t in 0..tokens.len() {
            let mut changed = tokens.clone();
            changed[t] = (changed[t] + 1) % 37;
            let after = logits(&mut model, &changed, 1);
            let vocab = config.vocab_size;
            assert_eq!(base[..t * vocab], after[..t * vocab], "{kind:?}: token {t} leaked into earlier positions");
            assert_ne!(base[t * vocab..], after[t * vocab..], "{kind:?}: token {t} changed nothing");
        }
    }
}

#[test]
fn cached_decoding_equals_full_forward() {
    for (kind, positions) in [FfwKind::Dense, FfwKind::Peer]
        .into_iter()
        .flat_map(|kind| [(kind, Positions::Learned), (kind, Positions::Rotary)])
    {
        let config = tiny_with(kind, positions);
        let mut model = Gpt::<f64>::new(&config, 11);
        let tokens: Vec<u32> = (0..9).map(|i| (i * 5 % 37) as u32).collect();
        let full = logits(&mut model, &tokens, 1);
        let mut caches = model.new_caches();
        let mut tape = Tape::no_grad();
        let mut incremental = model.forward_cached(&mut tape, &tokens[..4], &mut caches).value().data().to_vec();
        for &token in &tokens[4..] {
            incremental.extend_from_slice(model.forward_cached(&mut tape, &[token], &mut caches).value().data());
        }
        for (a, b) in full.iter().zip(&incremental) {
            assert!((a - b).abs() < 1e-12, "{kind:?}, {positions:?}: cached {b} vs full {a}");
        }
    }
}

#[test]
fn rotary_positions_make_token_order_matter() {
    // Without any position signal, causal attention sees the prefix as a set: swapping the first two
    // tokens could not change the logits of the third. Rotary positions (and no learned table) must.
    let config = tiny_with(FfwKind::Dense, Positions::Rotary);
    let mut model = Gpt::<f64>::new(&config, 5);
    assert!(model.params().iter().all(|p| p.name != "position_embedding"));
    let vocab = config.vocab_size;
    let in_order = logits(&mut model, &[3, 8, 20], 1);
    let swapped = logits(&mut model, &[8, 3, 20], 1);
    let change: f64 = in_order[2 * vocab..].iter().zip(&swapped[2 * vocab..]).map(|(a, b)| (a - b).abs()).sum();
    assert!(change > 1e-6, "swapping earlier tokens moved the last logits by only {change}");
}

#[test]
fn batch_rows_are_independent() {
    let config = tiny(FfwKind::Dense);
    let mut model = Gpt::<f64>::new(&config, 3);
    let a: Vec<u32> = (0..6).collect();
    let b: Vec<u32> = (10..16).collect();
    let both = logits(&mut model, &[a.clone(), b.clone()].concat(), 2);
    let alone = [logits(&mut model, &a, 1), logits(&mut model, &b, 1)].concat();
    for (x, y) in both.iter().zip(&alone) {
        assert!((x - y).abs() < 1e-12);
    }
}

#[test]
fn impossible_configs_name_the_field() {
    let mut config = tiny(FfwKind::Peer);
    config.n_heads = 3;
    assert!(config.validate().unwrap_err().to_string().starts_with("n_heads"), "{:?}", config.validate());
    let mut config = tiny(FfwKind::Peer);
    config.peer.num_experts = 15;
    assert!(config.validate().unwrap_err().to_string().contains("num_experts"), "{:?}", config.validate());
    let mut config = tiny(FfwKind::Peer);
    config.peer.keys.top_k = 5; // more than √N = 4
    assert!(config.validate().unwrap_err().to_string().contains("top_k"), "{:?}", config.validate());
    let mut config = tiny(FfwKind::Dense);
    config.ffw_blocks = Some(vec![3]);
    assert!(config.validate().unwrap_err().to_string().starts_with("ffw_blocks"));
    let mut config = tiny_with(FfwKind::Dense, Positions::Rotary);
    config.n_heads = 16; // heads one column wide: no pairs to turn
    assert!(config.validate().unwrap_err().to_string().starts_with("positions"), "{:?}", config.validate());
}

#[test]
fn peer_goes_in_the_middle_block_by_default() {
    let config = tiny(FfwKind::Peer);
    let kinds: Vec<FfwKind> = (0..3).map(|b| config.ffw_of(b)).collect();
    assert_eq!(kinds, [FfwKind::Dense, FfwKind::Peer, FfwKind::Dense]);
}
