//! Gradient checks for `sum`, `mean`, `sum_last`, `mean_last` and `max_last` over random shapes.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::{ops, Rng, Tensor};
use proptest::prelude::*;

/// A random shape of rank 1 to 3, each axis 1..=6.
fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    (1usize..=3).prop_flat_map(|rank| shape(rank, 6))
}

/// Rows whose entries are a shuffled 0, 0.5, 1, ... plus noise in [0, 0.1): every row's maximum is
/// unique and ahead of the runner-up by at least 0.4, so no finite-difference step can change the winner.
fn distinct_rows(dims: &[usize], seed: u64) -> Tensor<f64> {
    let width = *dims.last().unwrap();
    let mut rng = Rng::new(seed);
    let mut data = Vec::new();
    for _ in 0..dims.iter().product::<usize>() / width {
        let mut ranks: Vec<usize> = (0..width).collect();
        for i in (1..width).rev() {
            ranks.swap(i, rng.below(i as u64 + 1) as usize);
        }
        data.extend(ranks.iter().map(|&r| r as f64 * 0.5 - 1.0 + 0.1 * rng.uniform()));
    }
    Tensor::from_vec(dims, data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sums_and_means(dims in any_shape(), seed in any::<u64>()) {
        let x = tensor(&dims, -2.0, 2.0, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| ops::sum(t, &v[0]))?;
        check_gradients(std::slice::from_ref(&x), |t, v| ops::mean(t, &v[0]))?;
        check_gradients(std::slice::from_ref(&x), |t, v| ops::sum_last(t, &v[0]))?;
        check_gradients(&[x], |t, v| ops::mean_last(t, &v[0]))?;
    }

    #[test]
    fn max_over_last_axis(dims in any_shape(), seed in any::<u64>()) {
        check_gradients(&[distinct_rows(&dims, seed)], |t, v| ops::max_last(t, &v[0]))?;
    }

    #[test]
    fn input_used_twice(dims in any_shape(), seed in any::<u64>()) {
        // sum_last(x) · max_last(x), and mean(x ⊙ x): x reaches the output along two paths.
        let x = distinct_rows(&dims, seed);
        check_gradients(std::slice::from_ref(&x), |t, v| {
            let s = ops::sum_last(t, &v[0]);
            let m = ops::max_last(t, &v[0]);
            ops::mul(t, &s, &m)
        })?;
        check_gradients(&[x], |t, v| {
            let sq = ops::mul(t, &v[0], &v[0]);
            ops::mean(t, &sq)
        })?;
    }
}
