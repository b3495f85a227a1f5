//! The analytical FLOP counter (`model::flops`) against the FLOPs the kernels record while a real forward
//! and backward run (`kernels::flop_count`): first each feed-forward layer alone, then whole decoders.
//!
//! The two counts are independent: the kernels add up the sizes of the products and loops they actually
//! run; `flops` derives its figures from the config. They differ only where the config cannot know the
//! data: product-key retrieval computes fewer than its k² candidate sums when the pruning stops early
//! (`flops` counts all k²), and expert-choice MoE rounds each expert's capacity up to whole tokens.
//!
//! The tally is process-wide, so the tests of this file take turns (`COUNTER`).

use std::sync::Mutex;

use peerlm::kernels::flop_count;
use peerlm::model::{flops, FfwKind, Gpt, ModelConfig};
use peerlm::nn::{
    DenseFfw, DenseFfwConfig, FfwOut, Moe, MoeConfig, Peer, PeerConfig, Pkm, PkmConfig, ProductKeyConfig, Routing,
};
use peerlm::ops::{self, ExpertActivation};
use peerlm::{Param, ParamKind, Rng, Tape, Tensor, Var};

static COUNTER: Mutex<()> = Mutex::new(());

const D: usize = 64;
const TOKENS: usize = 512;

/// FLOPs recorded by the kernels while `work` runs, with no other test of this file running.
fn executed(work: impl FnOnce()) -> f64 {
    let _turn = COUNTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    flop_count::take();
    work();
    flop_count::take() as f64
}

fn assert_close(what: &str, executed: f64, counted: f64, tolerance: f64) {
    let gap = (executed - counted) / counted;
    assert!(gap.abs() <= tolerance, "{what}: the kernels ran {executed} FLOPs, flops counts {counted} ({gap:+.3})");
}

/// One forward and backward of a layer on `TOKENS` random tokens, with the input's gradient needed as it
/// is inside a model; the loss (a weighted sum) is elementwise and adds nothing countable.
fn layer_step(run: impl FnOnce(&mut Tape<f32>, &Var<f32>) -> FfwOut<f32>) {
    let x = Param::new("x", ParamKind::Weight, Tensor::randn(&[TOKENS, D], 1.0, &mut Rng::new(1)));
    let mut tape = Tape::new();
    let xv = tape.param(&x);
    let out = run(&mut tape, &xv);
    let weights = tape.constant(Tensor::randn(out.y.shape(), 1.0, &mut Rng::new(2)));
    let weighted = ops::mul(&mut tape, &out.y, &weights);
    let mut loss = ops::sum(&mut tape, &weighted);
    if let Some(aux) = &out.aux_loss {
        loss = ops::add(&mut tape, &loss, aux);
    }
    tape.backward(&loss);
}

fn peer_config() -> PeerConfig {
    PeerConfig {
        keys: ProductKeyConfig { d_model: D, heads: 4, top_k: 8, key_dim: 32, query_batch_norm: true },
        num_experts: 64 * 64,
        query_bn_per_head: false,
        gate: peerlm::nn::Gate::Softmax,
        activation: ExpertActivation::Gelu,
    }
}

fn pkm_config() -> PkmConfig {
    PkmConfig {
        keys: ProductKeyConfig { d_model: D, heads: 4, top_k: 8, key_dim: 32, query_batch_norm: true },
        sub_keys: 64,
    }
}

fn moe_config(routing: Routing) -> MoeConfig {
    MoeConfig {
        d_model: D,
        num_experts: 8,
        d_expert: 4 * D,
        top_k: 2,
        routing,
        capacity_factor: 1.0,
        aux_loss_weight: 0.01,
    }
}

#[test]
fn each_feed_forward_layer_runs_what_flops_counts() {
    let dense_config = DenseFfwConfig { d_model: D, d_ff: 4 * D };
    let mut dense = DenseFfw::<f32>::new(&dense_config, "dense", &mut Rng::new(3));
    let ran = executed(|| layer_step(|tape, x| dense.forward(tape, x, true)));
    assert_close("dense", ran / TOKENS as f64, flops::dense(&dense_config).train(), 1e-9);

    for routing in [Routing::TokenChoice, Routing::ExpertChoice] {
        let config = moe_config(routing);
        let mut moe = Moe::<f32>::new(&config, "moe", &mut Rng::new(4));
        let ran = executed(|| layer_step(|tape, x| moe.forward(tape, x, true)));
        assert_close(&format!("moe {routing:?}"), ran / TOKENS as f64, flops::moe(&config).train(), 0.02);
    }

    let mut pkm = Pkm::<f32>::new(&pkm_config(), "pkm", &mut Rng::new(5));
    let ran = executed(|| layer_step(|tape, x| pkm.forward(tape, x, true)));
    assert_close("pkm", ran / TOKENS as f64, flops::pkm(&pkm_config()).train(), 0.02);

    let mut peer = Peer::<f32>::new(&peer_config(), "peer", &mut Rng::new(6));
    let ran = executed(|| layer_step(|tape, x| peer.forward(tape, x, true)));
    let counted = flops::peer(&peer_config());
    assert_close("peer", ran / TOKENS as f64, counted.train(), 0.02);
    // The k² candidate sums are counted in full; the pruned selection computes at most that many.
    assert!(ran / TOKENS as f64 <= counted.train(), "peer: ran {ran} FLOPs, more than counted");
}

#[test]
fn key_scoring_backward_costs_the_selected_pairs_not_the_forward_twice() {
    // The backward of retrieval touches h·k selected pairs, not the h·√N sub-keys scored forward: the
    // executed backward is far below twice the forward.
    let config = peer_config();
    let mut peer = Peer::<f32>::new(&config, "peer", &mut Rng::new(7));
    let x = Param::new("x", ParamKind::Weight, Tensor::randn(&[TOKENS, D], 1.0, &mut Rng::new(1)));
    let mut tape = Tape::new();
    let mut forward = 0.0;
    let backward = executed(|| {
        let xv = tape.param(&x);
        let out = peer.forward(&mut tape, &xv, true);
        forward = flop_count::take() as f64;
        let loss = ops::sum(&mut tape, &out.y);
        tape.backward(&loss);
    });
    let counted = flops::peer(&config);
    assert_close("peer forward", forward / TOKENS as f64, counted.forward, 0.02);
    assert_close("peer backward", backward / TOKENS as f64, counted.backward, 0.02);
    assert!(backward < 1.6 * forward, "backward {backward} against forward {forward}");
}

fn tiny_model(ffw: FfwKind) -> ModelConfig {
    let mut config = ModelConfig {
        vocab_size: 300,
        seq_len: 80,
        d_model: D,
        n_layers: 3,
        n_heads: 4,
        ffw,
        ..ModelConfig::default()
    };
    config.dense.d_ff = 4 * D;
    config.moe = moe_config(Routing::ExpertChoice);
    config.pkm = pkm_config();
    config.peer = peer_config();
    config.propagate_d_model();
    config.validate().unwrap();
    config
}

#[test]
fn a_whole_training_step_runs_what_flops_counts() {
    for ffw in [FfwKind::Dense, FfwKind::Moe, FfwKind::Pkm, FfwKind::Peer] {
        let config = tiny_model(ffw);
        let mut model = Gpt::<f32>::new(&config, 9);
        let batch = 8;
        let tokens = batch * config.seq_len;
        let inputs: Vec<u32> = (0..tokens).map(|i| (i * 37 % config.vocab_size) as u32).collect();
        let targets: Vec<u32> = (0..tokens).map(|i| (i * 11 % config.vocab_size) as u32).collect();
        let ran = executed(|| {
            let mut tape = Tape::new();
            let (loss, _) = model.loss(&mut tape, &inputs, &targets, batch, true);
            tape.backward(&loss);
        });
        // `flops` charges attention's full context (the study's convention); the kernel skips most of the
        // masked half, and says exactly how much it runs.
        let (fwd, bwd) = ops::attention::causal_attention_flops(batch, config.seq_len, config.seq_len, D);
        let full = flops::attention(D, config.seq_len).train() - flops::attention(D, 0).train();
        let skipped = config.n_layers as f64 * (full * tokens as f64 - (fwd + bwd) as f64);
        assert!(skipped > 0.0, "at {} positions the kernel skips part of the masked half", config.seq_len);
        let counted = flops::train_flops_per_token(&config);
        assert_close(&format!("{ffw:?} model"), (ran + skipped) / tokens as f64, counted, 0.02);
    }
}

#[test]
fn a_budget_buys_the_steps_that_spend_it() {
    for ffw in [FfwKind::Dense, FfwKind::Moe, FfwKind::Pkm, FfwKind::Peer] {
        let config = tiny_model(ffw);
        let tokens_per_step = 4 * config.seq_len;
        let per_step = flops::train_flops_per_token(&config) * tokens_per_step as f64;
        for budget in [1e9, 3.3e11, 1e13] {
            let steps = flops::steps_for_budget(&config, budget, tokens_per_step).unwrap();
            let spent = steps as f64 * per_step;
            assert!((spent - budget).abs() <= per_step / 2.0, "{ffw:?} {budget}");
        }
        let too_small = flops::steps_for_budget(&config, per_step / 10.0, tokens_per_step).unwrap_err().to_string();
        assert!(too_small.contains("no whole step"), "{too_small}");
    }
}
