//! The whole model's gradient against central differences in f64: a tiny GPT (vocabulary 30, 6 positions,
//! width 8, 2 blocks) with each feed-forward kind in both blocks (dense, MoE with token choice and with
//! expert choice, PKM, PEER), in training mode (batch-norm and expert-choice routing over the batch).
//! Entries of every parameter tensor are perturbed, with the step and tolerance of
//! `common::Check::default()`.
//!
//! The top-k selections make the loss piecewise smooth: where a perturbation flips a selection, the loss
//! jumps (the swapped expert's output differs from the one it replaces). Such an entry shows as a second
//! difference far above the smooth h²·f″ and is skipped for another; the test allows very few skips, so a
//! systematic failure cannot hide behind them.

use peerlm::model::{FfwKind, Gpt, ModelConfig};
use peerlm::nn::{Module, Routing};
use peerlm::{ops, Grad, Rng, Tape, Tensor};

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;
/// Random entries per parameter tensor, besides the entry of its largest gradient.
const RANDOM_ENTRIES: usize = 3;
/// The mean cross-entropy of 12 tokens has gradients of ~0.01, small next to the tolerance's "1 +": the
/// checked loss is this multiple of it.
const LOSS_SCALE: f64 = 100.0;

fn config(ffw: FfwKind, routing: Routing) -> ModelConfig {
    let mut config =
        ModelConfig { vocab_size: 30, seq_len: 6, d_model: 8, n_layers: 2, n_heads: 2, ffw, ..ModelConfig::default() };
    config.ffw_blocks = Some(vec![0, 1]);
    config.dense.d_ff = 12;
    (config.moe.num_experts, config.moe.d_expert, config.moe.top_k, config.moe.routing) = (4, 6, 2, routing);
    config.moe.aux_loss_weight = 0.3;
    (config.pkm.sub_keys, config.pkm.keys.heads, config.pkm.keys.top_k, config.pkm.keys.key_dim) = (3, 2, 2, 4);
    (config.peer.num_experts, config.peer.keys.heads, config.peer.keys.top_k, config.peer.keys.key_dim) = (16, 2, 2, 4);
    config.propagate_d_model();
    config.validate().unwrap();
    config
}

/// 2 sequences of 6 tokens and their targets.
fn batch(seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut tokens = || (0..12).map(|_| rng.below(30) as u32).collect::<Vec<u32>>();
    (tokens(), tokens())
}

/// The scaled training loss (cross-entropy plus any auxiliary loss) on a tape that records or not.
fn scaled_loss(
    model: &mut Gpt<f64>,
    tape: &mut Tape<f64>,
    (inputs, targets): &(Vec<u32>, Vec<u32>),
) -> peerlm::Var<f64> {
    let (loss, _) = model.loss(tape, inputs, targets, 2, true);
    ops::mul_scalar(tape, &loss, LOSS_SCALE)
}

fn check_model(ffw: FfwKind, routing: Routing, seed: u64) {
    let what = format!("{ffw:?} ({routing:?})");
    let mut model = Gpt::<f64>::new(&config(ffw, routing), seed);
    // Unit-scale parameters (GPT-2's 0.02 makes every gradient tiny); gains around 1.
    for (i, p) in model.params_mut().into_iter().enumerate() {
        let mut value = Tensor::randn(p.value.shape(), 0.5, &mut Rng::new(seed).fork(i as u64));
        if p.name.ends_with("gain") {
            value.data_mut().iter_mut().for_each(|x| *x += 1.0);
        }
        p.value = value;
    }
    let data = batch(seed);
    let mut tape = Tape::new();
    let loss = scaled_loss(&mut model, &mut tape, &data);
    tape.backward(&loss);
    let analytic: Vec<Tensor<f64>> = model
        .params()
        .iter()
        .map(|p| tape.grad(p).map(Grad::to_dense).unwrap_or_else(|| Tensor::zeros(p.value.shape())))
        .collect();
    drop(tape);
    let eval = |model: &mut Gpt<f64>| scaled_loss(model, &mut Tape::no_grad(), &data).value().item();
    let at = eval(&mut model);

    let mut rng = Rng::new(seed ^ 0xc0de);
    let (mut checked, mut skipped) = (0, 0);
    for (i, grad) in analytic.iter().enumerate() {
        let name = model.params()[i].name.clone();
        let n = grad.numel();
        let largest = (0..n).max_by(|&a, &b| grad.data()[a].abs().total_cmp(&grad.data()[b].abs())).unwrap();
        let mut entries = vec![largest];
        let mut largest_numeric: f64 = 0.0;
        let mut draws = 0;
        while let Some(c) = entries.pop() {
            let original = model.params()[i].value.data()[c];
            let h = EPS * original.abs().max(1.0);
            let mut loss_with = |x: f64| {
                model.params_mut()[i].value.data_mut()[c] = x;
                eval(&mut model)
            };
            let (up, down) = (loss_with(original + h), loss_with(original - h));
            model.params_mut()[i].value.data_mut()[c] = original;
            // Smooth: up − 2·at + down = h²·f″ ≈ 1e-12·f″. A flipped selection: a jump of the loss itself.
            if (up - 2.0 * at + down).abs() > 1e-7 * (1.0 + at.abs()) {
                skipped += 1;
                entries.push(rng.below(n as u64) as usize);
                assert!(skipped <= 3, "{what}: too many entries where a selection flips ({name}, element {c})");
                continue;
            }
            let numeric = (up - down) / (2.0 * h);
            let a = grad.data()[c];
            let err = (a - numeric).abs() / (1.0 + a.abs().max(numeric.abs()));
            assert!(
                err <= TOL,
                "{what}: {name}, element {c}: analytic {a:.10e}, numeric {numeric:.10e} (error {err:.2e})"
            );
            largest_numeric = largest_numeric.max(numeric.abs());
            checked += 1;
            if draws < RANDOM_ENTRIES {
                draws += 1;
                entries.push(rng.below(n as u64) as usize);
            }
        }
        if ffw == FfwKind::Pkm && name.ends_with("ln2.bias") {
            // PKM reads its input only through the batch-normalised queries, and the batch norm removes the
            // shift this bias adds to every query: its gradient is exactly zero in training.
            assert!(largest_numeric < 1e-9, "{what}: {name} should not affect the loss ({largest_numeric:.2e})");
        } else {
            // Every other tensor takes part: its largest gradient entry moves the loss measurably.
            assert!(largest_numeric > 1e-3, "{what}: {name} barely affects the loss ({largest_numeric:.2e})");
        }
    }
    assert!(checked >= 4 * analytic.len(), "{what}: {checked} entries checked");
}

#[test]
fn dense_model_gradient() {
    check_model(FfwKind::Dense, Routing::TokenChoice, 1);
}

#[test]
fn moe_token_choice_model_gradient() {
    check_model(FfwKind::Moe, Routing::TokenChoice, 2);
}

#[test]
fn moe_expert_choice_model_gradient() {
    check_model(FfwKind::Moe, Routing::ExpertChoice, 3);
}

#[test]
fn pkm_model_gradient() {
    check_model(FfwKind::Pkm, Routing::TokenChoice, 4);
}

#[test]
fn peer_model_gradient() {
    check_model(FfwKind::Peer, Routing::TokenChoice, 5);
}
