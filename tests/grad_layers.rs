//! End-to-end gradient checks of the feed-forward layers, in f64, with respect to the input and to every
//! parameter the layer owns.
//!
//! `common::check_gradients` takes its inputs as tensors, but a layer enters its own parameters into the
//! tape. So the check here perturbs the layer's parameters in place (through `Module::params_mut`) and the
//! input, and compares central differences with `tape.grad`, with the same step and tolerance as
//! `common::Check::default()`. Batch norm runs in training mode (batch statistics: the gradient flows
//! through them). Top-k selections are locally constant for random data, so the layers are smooth at the
//! points checked. The routing op the MoE adds, `ops::scatter_rows`, gets its own property check first.

mod common;

use common::{check_gradients, tensor};
use peerlm::nn::{
    DenseFfw, DenseFfwConfig, FfwOut, Gate, Module, Moe, MoeConfig, Peer, PeerConfig, Pkm, PkmConfig, ProductKeyConfig,
    Routing,
};
use peerlm::ops::{self, ExpertActivation};
use peerlm::{Grad, Param, ParamKind, Rng, Tape, Tensor, Var};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn scatter_rows_gradients(n in 1usize..8, width in 1usize..5, total in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let rows: Vec<u32> = (0..n).map(|_| rng.below(total as u64) as u32).collect(); // repeats likely
        let y = tensor(&[n, width], -2.0, 2.0, seed);
        let weights = tensor(&[n], -1.0, 1.0, seed ^ 1);
        check_gradients(&[y, weights], |t, v| ops::scatter_rows(t, &v[0], &rows, &v[1], total))?;
    }
}

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;
const MAX_COORDS: usize = 48;

/// `Σ y ⊙ weights (+ aux)`: a scalar whose gradient reaches every output element with its own weight.
fn loss(tape: &mut Tape<f64>, out: FfwOut<f64>, weights: &Tensor<f64>) -> Var<f64> {
    let weights = tape.constant(weights.clone());
    let weighted = ops::mul(tape, &out.y, &weights);
    let total = ops::sum(tape, &weighted);
    match out.aux_loss {
        Some(aux) => ops::add(tape, &total, &aux),
        None => total,
    }
}

/// Checks d loss / d x and d loss / d p for every parameter p of `layer`.
fn check_layer<L: Module<f64>>(
    layer: &mut L,
    forward: impl Fn(&mut L, &mut Tape<f64>, &Var<f64>) -> FfwOut<f64>,
    x: Tensor<f64>,
) {
    let mut x = Param::new("x", ParamKind::Weight, x);
    let out_shape = {
        let mut tape = Tape::no_grad();
        let xv = tape.param(&x);
        forward(layer, &mut tape, &xv).y.shape().to_vec()
    };
    let weights = Tensor::randn(&out_shape, 1.0, &mut Rng::new(0x5eed));
    let eval = |layer: &mut L, x: &Param<f64>| -> f64 {
        let mut tape = Tape::no_grad();
        let xv = tape.param(x);
        let out = forward(layer, &mut tape, &xv);
        loss(&mut tape, out, &weights).value().item()
    };

    let mut tape = Tape::new();
    let xv = tape.param(&x);
    let out = forward(layer, &mut tape, &xv);
    let total = loss(&mut tape, out, &weights);
    tape.backward(&total);
    let dense = |p: &Param<f64>| tape.grad(p).map(Grad::to_dense).unwrap_or_else(|| Tensor::zeros(p.value.shape()));
    let x_grad = dense(&x);
    let param_grads: Vec<Tensor<f64>> = layer.params().into_iter().map(dense).collect();

    let mut rng = Rng::new(0xc0de);
    let coords = |n: usize, rng: &mut Rng| -> Vec<usize> {
        if n <= MAX_COORDS {
            (0..n).collect()
        } else {
            (0..MAX_COORDS).map(|_| rng.below(n as u64) as usize).collect()
        }
    };
    // The input: index usize::MAX stands for x in the messages.
    for c in coords(x.value.numel(), &mut rng) {
        let numeric = central_difference(&mut x.value, c, |x_now| {
            let x_param = Param::new("x", ParamKind::Weight, x_now.clone());
            eval(layer, &x_param)
        });
        compare("x", c, x_grad.data()[c], numeric);
    }
    for (i, analytic) in param_grads.iter().enumerate() {
        let name = layer.params()[i].name.clone();
        for c in coords(analytic.numel(), &mut rng) {
            let mut value = layer.params()[i].value.clone();
            let numeric = central_difference(&mut value, c, |v| {
                layer.params_mut()[i].value = v.clone();
                eval(layer, &x)
            });
            layer.params_mut()[i].value = value;
            compare(&name, c, analytic.data()[c], numeric);
        }
    }
}

/// (f(t + h e_c) - f(t - h e_c)) / 2h, leaving `t` as it was.
fn central_difference(t: &mut Tensor<f64>, c: usize, mut f: impl FnMut(&Tensor<f64>) -> f64) -> f64 {
    let original = t.data()[c];
    let h = EPS * original.abs().max(1.0);
    t.data_mut()[c] = original + h;
    let up = f(t);
    t.data_mut()[c] = original - h;
    let down = f(t);
    t.data_mut()[c] = original;
    (up - down) / (2.0 * h)
}

fn compare(name: &str, c: usize, analytic: f64, numeric: f64) {
    let err = (analytic - numeric).abs() / (1.0 + analytic.abs().max(numeric.abs()));
    assert!(err <= TOL, "{name}, element {c}: analytic {analytic:.10e}, numeric {numeric:.10e} (error {err:.2e})");
}

fn input(tokens: usize, d: usize, seed: u64) -> Tensor<f64> {
    Tensor::uniform(&[tokens, d], -1.5, 1.5, &mut Rng::new(seed))
}

#[test]
fn dense_ffw_gradients() {
    let config = DenseFfwConfig { d_model: 5, d_ff: 7 };
    let mut layer = DenseFfw::<f64>::new(&config, "ffw", &mut Rng::new(1));
    // GPT-2's 0.02 makes every gradient tiny next to the tolerance's "1 +": use unit-scale weights.
    for (i, p) in layer.params_mut().into_iter().enumerate() {
        p.value = Tensor::randn(p.value.shape(), 0.7, &mut Rng::new(1).fork(i as u64));
    }
    check_layer(&mut layer, |l, t, x| l.forward(t, x, true), input(4, 5, 2));
}

fn moe_config(routing: Routing) -> MoeConfig {
    MoeConfig { d_model: 6, num_experts: 4, d_expert: 5, top_k: 2, routing, capacity_factor: 1.0, aux_loss_weight: 0.3 }
}

fn moe_layer(routing: Routing, seed: u64) -> Moe<f64> {
    let mut layer = Moe::<f64>::new(&moe_config(routing), "moe", &mut Rng::new(seed));
    // Unit-scale weights, each parameter from its own stream (identical experts would hide the gates'
    // gradient: gates summing to 1 over equal outputs have no effect).
    for (i, p) in layer.params_mut().into_iter().enumerate() {
        p.value = Tensor::randn(p.value.shape(), 0.7, &mut Rng::new(seed).fork(i as u64));
    }
    layer
}

#[test]
fn moe_token_choice_gradients_including_aux_loss() {
    for seed in [3, 4] {
        let mut layer = moe_layer(Routing::TokenChoice, seed);
        check_layer(&mut layer, |l, t, x| l.forward(t, x, true), input(7, 6, seed));
    }
}

#[test]
fn moe_expert_choice_gradients() {
    for seed in [5, 6] {
        let mut layer = moe_layer(Routing::ExpertChoice, seed);
        check_layer(&mut layer, |l, t, x| l.forward(t, x, true), input(7, 6, seed));
    }
}

#[test]
fn pkm_gradients() {
    for query_batch_norm in [true, false] {
        let config = PkmConfig {
            keys: ProductKeyConfig { d_model: 6, heads: 2, top_k: 2, key_dim: 4, query_batch_norm },
            sub_keys: 3,
        };
        let mut layer = Pkm::<f64>::new(&config, "pkm", &mut Rng::new(7));
        check_layer(&mut layer, |l, t, x| l.forward(t, x, true), input(5, 6, 8));
    }
}

#[test]
fn peer_gradients() {
    let variants = [
        (true, false, Gate::Softmax, ExpertActivation::Gelu),
        (false, false, Gate::Sigmoid, ExpertActivation::Relu),
        (true, false, Gate::Sigmoid, ExpertActivation::Gelu),
        (true, true, Gate::Softmax, ExpertActivation::Gelu),
    ];
    for (seed, (query_batch_norm, query_bn_per_head, gate, activation)) in variants.into_iter().enumerate() {
        let config = PeerConfig {
            keys: ProductKeyConfig { d_model: 6, heads: 2, top_k: 2, key_dim: 4, query_batch_norm },
            num_experts: 16,
            query_bn_per_head,
            gate,
            activation,
        };
        let mut layer = Peer::<f64>::new(&config, "peer", &mut Rng::new(9 + seed as u64));
        // Unit-scale expert tables, so their gradients are not drowned by the tolerance's "1 +".
        layer.u.value = Tensor::randn(layer.u.value.shape(), 0.8, &mut Rng::new(seed as u64));
        layer.v.value = Tensor::randn(layer.v.value.shape(), 0.8, &mut Rng::new(seed as u64 + 100));
        check_layer(&mut layer, |l, t, x| l.forward(t, x, true), input(5, 6, 10 + seed as u64));
    }
}
