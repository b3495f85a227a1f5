//! Gradient checks for `softmax`, `log_softmax` and `cross_entropy`, plus value tests: rows sum to 1,
//! huge logits stay finite, the loss matches a hand-computed number, ignored rows are skipped.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::{ops, Param, ParamKind, Rng, Tape, Tensor};
use proptest::prelude::*;

/// A random shape of rank 1 to 3, each axis 1..=6.
fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    (1usize..=3).prop_flat_map(|rank| shape(rank, 6))
}

/// One target per row of `dims`, in `0..V`; with `ignore` set, about a third of them become `ignore`.
fn targets(dims: &[usize], seed: u64, ignore: Option<u32>) -> Vec<u32> {
    let vocab = *dims.last().unwrap() as u64;
    let rows = dims.iter().product::<usize>() / vocab as usize;
    let mut rng = Rng::new(seed);
    (0..rows)
        .map(|_| match ignore {
            Some(id) if rng.below(3) == 0 => id,
            _ => rng.below(vocab) as u32,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn softmax_and_log_softmax(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -3.0, 3.0, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| ops::softmax(t, &v[0]))?;
        check_gradients(&[x], |t, v| ops::log_softmax(t, &v[0]))?;
    }

    #[test]
    fn input_used_twice(dims in any_shape(), seed in any::<u64>()) {
        // softmax(x) ⊙ x and log_softmax(x) ⊙ softmax(x): x reaches the output along two paths.
        let x = tensor(&dims, -3.0, 3.0, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| {
            let p = ops::softmax(t, &v[0]);
            ops::mul(t, &p, &v[0])
        })?;
        check_gradients(&[x], |t, v| {
            let l = ops::log_softmax(t, &v[0]);
            let p = ops::softmax(t, &v[0]);
            ops::mul(t, &l, &p)
        })?;
    }

    #[test]
    fn cross_entropy(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -3.0, 3.0, seed);
        let all = targets(&dims, seed ^ 1, None);
        check_gradients(std::slice::from_ref(&x), |t, v| ops::cross_entropy(t, &v[0], &all, None))?;
        // Ignored rows: an out-of-vocabulary id (as padding usually is) and an in-vocabulary one.
        for ignore in [u32::MAX, 0] {
            let some = targets(&dims, seed ^ 2, Some(ignore));
            check_gradients(std::slice::from_ref(&x), |t, v| ops::cross_entropy(t, &v[0], &some, Some(ignore)))?;
        }
    }

    #[test]
    fn cross_entropy_of_logits_used_twice(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -3.0, 3.0, seed);
        let all = targets(&dims, seed ^ 3, None);
        check_gradients(&[x], |t, v| {
            let squared = ops::mul(t, &v[0], &v[0]);
            let logits = ops::add(t, &squared, &v[0]);
            ops::cross_entropy(t, &logits, &all, None)
        })?;
    }
}

#[test]
fn softmax_rows_sum_to_one_even_for_huge_logits() {
    let mut tape = Tape::<f32>::no_grad();
    let mut data: Vec<f32> = (0..3000).map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0).collect();
    data[7] = 1e4;
    data[1500] = -1e4;
    let x = tape.constant(Tensor::from_vec(&[3, 1000], data));
    let y = ops::softmax(&mut tape, &x);
    for row in y.value().data().chunks(1000) {
        assert!(row.iter().all(|p| p.is_finite() && *p >= 0.0));
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(y.value().data()[7], 1.0);
    let l = ops::log_softmax(&mut tape, &x);
    assert!(l.value().data().iter().all(|v| v.is_finite()));
    assert_eq!(l.value().data()[7], 0.0);
}

#[test]
fn cross_entropy_matches_a_hand_computed_value() {
    // Row 0: ln(e¹ + e² + e³) − 3 = 0.4076059644443803; row 1: ln 3 = 1.0986122886681098;
    // row 2 is ignored. Mean over the two counted rows: 0.7531091265562450.
    let mut tape = Tape::<f64>::no_grad();
    let x = tape.constant(Tensor::from_vec(&[3, 3], vec![1., 2., 3., 0., 0., 0., 9., -9., 4.]));
    let loss = ops::cross_entropy(&mut tape, &x, &[2, 1, 7], Some(7));
    assert!((loss.value().item() - 0.753_109_126_556_245).abs() < 1e-12, "{}", loss.value().item());
}

#[test]
fn cross_entropy_with_every_row_ignored_is_zero_with_zero_gradient() {
    let p = Param::new("logits", ParamKind::Weight, Tensor::<f64>::from_vec(&[2, 2], vec![1., 2., 3., 4.]));
    let mut tape = Tape::new();
    let x = tape.param(&p);
    let loss = ops::cross_entropy(&mut tape, &x, &[5, 5], Some(5));
    assert_eq!(loss.value().item(), 0.0);
    tape.backward(&loss);
    assert!(tape.grad(&p).unwrap().to_dense().data().iter().all(|&g| g == 0.0));
}

#[test]
#[should_panic(expected = "cross_entropy: target 3 of row 1 is outside the vocabulary of 3")]
fn cross_entropy_rejects_a_target_outside_the_vocabulary() {
    let mut tape = Tape::<f32>::no_grad();
    let x = tape.constant(Tensor::zeros(&[2, 3]));
    ops::cross_entropy(&mut tape, &x, &[0, 3], None);
}

/// Many rows and a wide vocabulary take the threaded path; the loss must still be exactly the serial sum.
#[test]
fn cross_entropy_on_many_rows_matches_a_row_by_row_loop() {
    let (rows, vocab) = (64, 1000);
    let logits = Tensor::<f64>::randn(&[rows, vocab], 2.0, &mut Rng::new(11));
    let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 37) % vocab as u32).collect();
    let mut tape = Tape::<f64>::no_grad();
    let x = tape.constant(logits.clone());
    let loss = ops::cross_entropy(&mut tape, &x, &targets, None).value().item();
    let mut want = 0.0;
    for (row, &t) in logits.data().chunks(vocab).zip(&targets) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        want += m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[t as usize];
    }
    want /= rows as f64;
    assert!((loss - want).abs() < 1e-12 * want.abs(), "{loss} vs {want}");
}
