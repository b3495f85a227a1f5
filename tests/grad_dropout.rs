//! Dropout: a gradient check with a fixed mask, and the statistics of the mask.
//!
//! The finite-difference side of `check_gradients` evaluates on a tape that does not record, where
//! dropout is (by design) the identity. So the checked function is written as dropout on a recording tape
//! and as its definition, `x ⊙ mask` with the mask the same seed produces, on the others; a separate test
//! checks that dropout's forward equals that definition exactly. The backward is then checked against the
//! derivative of the very function its forward computes.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::{ops, Rng, Tape, Tensor, Var};
use proptest::prelude::*;

const P: f64 = 0.3;

/// The mask dropout draws with probability `p` from `Rng::new(seed)`: one uniform per element in order,
/// dropped when below `p`, kept ones scaled by 1/(1 − p).
fn reference_mask(dims: &[usize], p: f64, seed: u64) -> Tensor<f64> {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    Tensor::from_vec(dims, (0..n).map(|_| if rng.uniform() < p { 0.0 } else { 1.0 / (1.0 - p) }).collect())
}

/// Dropout with a fixed seed where it is active; its definition where the tape does not record.
fn fixed_dropout(tape: &mut Tape<f64>, x: &Var<f64>, seed: u64) -> Var<f64> {
    if tape.is_recording() {
        ops::dropout(tape, x, P, &mut Rng::new(seed))
    } else {
        let mask = tape.constant(reference_mask(x.shape(), P, seed));
        ops::mul(tape, x, &mask)
    }
}

fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    (1usize..=3).prop_flat_map(|rank| shape(rank, 6))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn dropout_gradient_with_a_fixed_mask(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -2.0, 2.0, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| fixed_dropout(t, &v[0], seed))?;
        // Used twice: dropout(x) ⊙ x.
        check_gradients(&[x], |t, v| {
            let d = fixed_dropout(t, &v[0], seed);
            ops::mul(t, &d, &v[0])
        })?;
    }

    #[test]
    fn forward_is_x_times_the_seeded_mask(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -2.0, 2.0, seed);
        let mut tape = Tape::new();
        let p = peerlm::Param::new("x", peerlm::ParamKind::Weight, x.clone());
        let v = tape.param(&p);
        let y = ops::dropout(&mut tape, &v, P, &mut Rng::new(seed));
        let mask = reference_mask(&dims, P, seed);
        let want: Vec<f64> = x.data().iter().zip(mask.data()).map(|(a, m)| a * m).collect();
        prop_assert_eq!(y.value().data(), &want[..]);
    }
}

#[test]
fn keep_rate_and_mean_match_p() {
    let n = 200_000;
    let p = 0.25;
    let mut tape = Tape::<f32>::new();
    let param = peerlm::Param::new("x", peerlm::ParamKind::Weight, Tensor::full(&[n], 2.0f32));
    let x = tape.param(&param);
    let y = ops::dropout(&mut tape, &x, p, &mut Rng::new(42));
    let kept = y.value().data().iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    // Binomial standard deviation of the keep rate: sqrt(p(1-p)/n) ≈ 0.001; allow 5 of them.
    assert!((kept - (1.0 - p)).abs() < 0.005, "keep rate {kept}");
    let mean = y.value().data().iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    assert!((mean - 2.0).abs() < 0.02, "E[output] = {mean}, input 2");
    assert!(y.value().data().iter().all(|&v| v == 0.0 || (v - 2.0 / 0.75).abs() < 1e-6));
}

#[test]
fn same_seed_same_mask_and_identity_when_off() {
    let param = peerlm::Param::new("x", peerlm::ParamKind::Weight, Tensor::<f32>::full(&[1000], 1.0));
    let mut tape = Tape::new();
    let x = tape.param(&param);
    let a = ops::dropout(&mut tape, &x, 0.5, &mut Rng::new(9));
    let b = ops::dropout(&mut tape, &x, 0.5, &mut Rng::new(9));
    let c = ops::dropout(&mut tape, &x, 0.5, &mut Rng::new(10));
    assert_eq!(a.value(), b.value());
    assert_ne!(a.value(), c.value());
    // p = 0 and a non-recording tape return the input unchanged, without drawing from the generator.
    let before = tape.len();
    let mut rng = Rng::new(3);
    let same = ops::dropout(&mut tape, &x, 0.0, &mut rng);
    assert!(same.value().shares_buffer(x.value()) && tape.len() == before && rng.state() == 3);
    let mut eval = Tape::no_grad();
    let xe = eval.param(&param);
    let off = ops::dropout(&mut eval, &xe, 0.5, &mut rng);
    assert!(off.value().shares_buffer(xe.value()) && rng.state() == 3);
}
