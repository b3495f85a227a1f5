//! Gradient checks for the elementwise unary ops (`neg, exp, log, sqrt, tanh, sigmoid, relu, gelu`,
//! `add_scalar`, `mul_scalar`) over random shapes of rank 1 to 3.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::ops::{self, Gelu};
use peerlm::{Tape, Tensor, Var};
use proptest::prelude::*;

type UnaryFn = fn(&mut Tape<f64>, &Var<f64>) -> Var<f64>;
type UnaryFn32 = fn(&mut Tape<f32>, &Var<f32>) -> Var<f32>;
/// The scalar formula an op's forward must match.
type Reference = fn(f64) -> f64;

/// Ops smooth on all of ℝ, checked on [-3, 3].
const SMOOTH: [(&str, UnaryFn); 8] = [
    ("neg", ops::neg),
    ("exp", ops::exp),
    ("tanh", ops::tanh),
    ("sigmoid", ops::sigmoid),
    ("gelu_tanh", |t, x| ops::gelu(t, x, Gelu::Tanh)),
    ("gelu_erf", |t, x| ops::gelu(t, x, Gelu::Erf)),
    ("add_scalar", |t, x| ops::add_scalar(t, x, -1.25)),
    ("mul_scalar", |t, x| ops::mul_scalar(t, x, 2.5)),
];

/// Ops defined (and smooth) only for positive inputs, checked on [0.5, 3].
const POSITIVE: [(&str, UnaryFn); 2] = [("log", ops::log), ("sqrt", ops::sqrt)];

/// A random shape of rank 1 to 3, each axis 1..=6.
fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    (1usize..=3).prop_flat_map(|rank| shape(rank, 6))
}

/// Values in ±[0.1, 2]: never within 0.1 of relu's kink at 0, far beyond the finite-difference step.
fn away_from_zero(dims: &[usize], seed: u64) -> Tensor<f64> {
    let raw = tensor(dims, -1.9, 1.9, seed);
    Tensor::from_vec(dims, raw.data().iter().map(|&v| v + 0.1f64.copysign(v)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn smooth_ops(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -3.0, 3.0, seed);
        for (name, op) in SMOOTH {
            check_gradients(std::slice::from_ref(&x), |t, v| op(t, &v[0])).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }

    #[test]
    fn ops_on_positive_inputs(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, 0.5, 3.0, seed);
        for (name, op) in POSITIVE {
            check_gradients(std::slice::from_ref(&x), |t, v| op(t, &v[0])).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }

    #[test]
    fn relu_away_from_its_kink(dims in any_shape(), seed in any::<u64>()) {
        check_gradients(&[away_from_zero(&dims, seed)], |t, v| ops::relu(t, &v[0]))?;
    }

    #[test]
    fn input_used_twice(dims in any_shape(), seed in any::<u64>()) {
        // x·σ(x) (SiLU) and relu(x) + tanh(x): each input reaches the output along two paths.
        let x = away_from_zero(&dims, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| {
            let s = ops::sigmoid(t, &v[0]);
            ops::mul(t, &v[0], &s)
        })?;
        check_gradients(&[x], |t, v| {
            let r = ops::relu(t, &v[0]);
            let h = ops::tanh(t, &v[0]);
            ops::add(t, &r, &h)
        })?;
    }
}

/// Long enough for the SIMD body, the scalar tail and (above 32K elements) the threaded path.
#[test]
fn forward_values_match_the_formulas() {
    let n = 70_001;
    let xs: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 12.0).collect();
    let mut tape = Tape::<f32>::no_grad();
    let x = tape.constant(Tensor::from_vec(&[n], xs.clone()));
    let cases: [(UnaryFn32, Reference); 6] = [
        (ops::sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
        (ops::tanh, f64::tanh),
        (ops::exp, f64::exp),
        (ops::relu, |v| v.max(0.0)),
        (
            |t, x| ops::gelu(t, x, Gelu::Tanh),
            |v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()),
        ),
        (|t, x| ops::gelu(t, x, Gelu::Erf), |v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))),
    ];
    for (op, reference) in cases {
        let y = op(&mut tape, &x);
        for (&v, &got) in xs.iter().zip(y.value().data()) {
            let want = reference(v as f64);
            assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "f({v}) = {got}, want {want}");
        }
    }
}
