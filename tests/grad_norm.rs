//! Gradient checks for layer norm and RMS norm (input, gain and bias), on rank 2 and 3, plus checks that
//! the large-tensor (threaded) path equals the small (single-thread) one and a plain-loop reference.

mod common;

use common::{check_gradients, shape, tensor};
use peerlm::ops::BatchNormStats;
use peerlm::{ops, Param, ParamKind, Tape, Tensor};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn layer_norm_all_inputs(rank in 2usize..4, dims in shape(3, 5), d in 2usize..20, seed in any::<u64>()) {
        let mut x_shape: Vec<usize> = dims[..rank - 1].to_vec();
        x_shape.push(d);
        let x = tensor(&x_shape, -2.0, 2.0, seed);
        let gain = tensor(&[d], 0.5, 1.5, seed ^ 1);
        let bias = tensor(&[d], -1.0, 1.0, seed ^ 2);
        check_gradients(&[x, gain, bias], |t, v| ops::layer_norm(t, &v[0], &v[1], &v[2], 1e-5))?;
    }

    #[test]
    fn rms_norm_all_inputs(rank in 2usize..4, dims in shape(3, 5), d in 1usize..20, seed in any::<u64>()) {
        let mut x_shape: Vec<usize> = dims[..rank - 1].to_vec();
        x_shape.push(d);
        let x = tensor(&x_shape, -2.0, 2.0, seed);
        let gain = tensor(&[d], 0.5, 1.5, seed ^ 1);
        check_gradients(&[x, gain], |t, v| ops::rms_norm(t, &v[0], &v[1], 1e-5))?;
    }

    #[test]
    fn norm_of_its_own_gain(d in 2usize..8, seed in any::<u64>()) {
        // The same [d] vector as input row, gain and bias.
        let x = tensor(&[d], 0.5, 2.0, seed);
        let y = tensor(&[1, d], -1.0, 1.0, seed ^ 3);
        check_gradients(&[x, y], |t, v| {
            let row = ops::reshape(t, &v[0], &[1, d]);
            let both = ops::add(t, &row, &v[1]);
            ops::layer_norm(t, &both, &v[0], &v[0], 1e-5)
        })?;
    }
}

/// Layer norm output, dx, dgain, dbias for a `[rows, d]` input, on a pool of `threads` threads.
fn layer_norm_grads(rows: usize, d: usize, threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut rng = peerlm::Rng::new(9);
        let x = Param::new("x", ParamKind::Weight, Tensor::<f32>::randn(&[rows, d], 1.0, &mut rng));
        let gain = Param::new("gain", ParamKind::NoDecay, Tensor::randn(&[d], 1.0, &mut rng));
        let bias = Param::new("bias", ParamKind::NoDecay, Tensor::randn(&[d], 1.0, &mut rng));
        let weights = Tensor::randn(&[rows, d], 1.0, &mut rng);
        let mut tape = Tape::new();
        let (xv, gv, bv) = (tape.param(&x), tape.param(&gain), tape.param(&bias));
        let y = ops::layer_norm(&mut tape, &xv, &gv, &bv, 1e-5);
        let w = tape.constant(weights);
        let weighted = ops::mul(&mut tape, &y, &w);
        let flat = ops::reshape(&mut tape, &weighted, &[1, rows * d]);
        let ones = tape.constant(Tensor::full(&[rows * d, 1], 1.0));
        let loss = ops::matmul(&mut tape, &flat, &ones);
        let loss = ops::reshape(&mut tape, &loss, &[]);
        let out = y.value().data().to_vec();
        tape.backward(&loss);
        let grad = |p: &Param<f32>| tape.grad(p).unwrap().to_dense().data().to_vec();
        vec![out, grad(&x), grad(&gain), grad(&bias)]
    })
}

#[test]
fn threaded_layer_norm_is_deterministic() {
    // 600 rows × 100 = 60 000 elements: above the threshold for threads, several row chunks.
    let one = layer_norm_grads(600, 100, 1);
    let two = layer_norm_grads(600, 100, 2);
    for (a, b) in one.iter().zip(&two) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn layer_norm_rows_have_zero_mean_unit_variance() {
    let x = Tensor::<f64>::randn(&[3, 16], 3.0, &mut peerlm::Rng::new(1));
    let mut tape = Tape::no_grad();
    let (xv, g, b) = (tape.constant(x), tape.constant(Tensor::full(&[16], 1.0)), tape.constant(Tensor::zeros(&[16])));
    let y = ops::layer_norm(&mut tape, &xv, &g, &b, 0.0);
    for row in y.value().data().chunks(16) {
        let mean: f64 = row.iter().sum::<f64>() / 16.0;
        let var: f64 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 16.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
    }
}

/// Plain-loop reference for `[rows, d]` rows: y, then the gradients of Σ w⊙y with respect to x, gain and
/// (layer norm only) bias.
fn reference_norm(x: &[f64], gain: &[f64], bias: Option<&[f64]>, w: &[f64], eps: f64) -> Vec<Vec<f64>> {
    let d = gain.len();
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dgain, mut dbias) = (vec![0.0; d], vec![0.0; d]);
    for ((xr, wr), (yr, dxr)) in x.chunks(d).zip(w.chunks(d)).zip(y.chunks_mut(d).zip(dx.chunks_mut(d))) {
        let mean = if bias.is_some() { xr.iter().sum::<f64>() / d as f64 } else { 0.0 };
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let dxhat: Vec<f64> = wr.iter().zip(gain).map(|(g, k)| g * k).collect();
        let mean_dxhat = if bias.is_some() { dxhat.iter().sum::<f64>() / d as f64 } else { 0.0 };
        let mean_dxhat_xhat = dxhat.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for j in 0..d {
            yr[j] = xhat[j] * gain[j] + bias.map_or(0.0, |b| b[j]);
            dxr[j] = rstd * (dxhat[j] - mean_dxhat - xhat[j] * mean_dxhat_xhat);
            dgain[j] += wr[j] * xhat[j];
            dbias[j] += wr[j];
        }
    }
    let mut out = vec![y, dx, dgain];
    if bias.is_some() {
        out.push(dbias);
    }
    out
}

#[test]
fn threaded_norms_match_a_plain_loop() {
    // 600 rows × 100: above the threshold for threads, ten row chunks, the last one partial.
    let (rows, d, eps) = (600, 100, 1e-5);
    let mut rng = peerlm::Rng::new(4);
    let x = Param::new("x", ParamKind::Weight, Tensor::<f64>::randn(&[rows, d], 2.0, &mut rng));
    let gain = Param::new("gain", ParamKind::NoDecay, Tensor::randn(&[d], 1.0, &mut rng));
    let bias = Param::new("bias", ParamKind::NoDecay, Tensor::randn(&[d], 1.0, &mut rng));
    let w = Tensor::<f64>::randn(&[rows, d], 1.0, &mut rng);
    for centered in [true, false] {
        let mut tape = Tape::new();
        let (xv, gv, bv, wv) = (tape.param(&x), tape.param(&gain), tape.param(&bias), tape.constant(w.clone()));
        let y = if centered {
            ops::layer_norm(&mut tape, &xv, &gv, &bv, eps)
        } else {
            ops::rms_norm(&mut tape, &xv, &gv, eps)
        };
        let weighted = ops::mul(&mut tape, &y, &wv);
        let row_sums = ops::sum_last(&mut tape, &weighted);
        let loss = ops::sum(&mut tape, &row_sums);
        tape.backward(&loss);
        let mut got = vec![y.value().data().to_vec()];
        let params = if centered { vec![&x, &gain, &bias] } else { vec![&x, &gain] };
        got.extend(params.iter().map(|p| tape.grad(p).unwrap().to_dense().data().to_vec()));
        let want =
            reference_norm(x.value.data(), gain.value.data(), centered.then(|| bias.value.data()), w.data(), eps);
        for (what, (g, r)) in ["y", "dx", "dgain", "dbias"].iter().zip(got.iter().zip(&want)) {
            let worst = g.iter().zip(r).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max);
            assert!(worst < 1e-10, "centered {centered}, {what}: relative error {worst}");
        }
    }
}

/// Batch norm in training mode, written out plainly for a `[rows, c]` input `x`, upstream gradient `w`
/// (of `Σ w⊙y`), per-column `gain`, `bias` and running statistics `(mean, var)` with `momentum`:
/// `[y, running mean, running var, dx, dgain, dbias]`.
///
/// The input gradient is summed from the explicit Jacobian: with μ = Σ_r x_r / R, σ² = Σ_r (x_r − μ)² / R
/// (biased), s = √(σ² + eps), ∂μ/∂x_j = 1/R and ∂s/∂x_j = (x_j − μ)/(R·s), so
/// ∂y_i/∂x_j = gain·((δ_ij − 1/R)/s − (x_i − μ)(x_j − μ)/(R·s³)); R² terms per column.
fn reference_batch_norm(
    x: &[f64],
    w: &[f64],
    gain: &[f64],
    bias: &[f64],
    stats: (&[f64], &[f64], f64),
    eps: f64,
) -> Vec<Vec<f64>> {
    let c = gain.len();
    let rows = x.len() / c;
    let r = rows as f64;
    let (running_mean, running_var, momentum) = stats;
    let mut out = vec![vec![0.0; x.len()], vec![0.0; c], vec![0.0; c], vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]];
    for col in 0..c {
        let column: Vec<f64> = (0..rows).map(|i| x[i * c + col]).collect();
        let upstream: Vec<f64> = (0..rows).map(|i| w[i * c + col]).collect();
        let mut mean = 0.0;
        for v in &column {
            mean += v;
        }
        mean /= r;
        let mut squares = 0.0;
        for v in &column {
            squares += (v - mean) * (v - mean);
        }
        let s = (squares / r + eps).sqrt();
        out[1][col] = (1.0 - momentum) * running_mean[col] + momentum * mean;
        out[2][col] = (1.0 - momentum) * running_var[col] + momentum * squares / (r - 1.0); // unbiased
        for i in 0..rows {
            out[0][i * c + col] = gain[col] * (column[i] - mean) / s + bias[col];
            out[4][col] += upstream[i] * (column[i] - mean) / s;
            out[5][col] += upstream[i];
        }
        for j in 0..rows {
            let mut dx = 0.0;
            for i in 0..rows {
                let delta = if i == j { 1.0 } else { 0.0 };
                let dy_i_dx_j =
                    gain[col] * ((delta - 1.0 / r) / s - (column[i] - mean) * (column[j] - mean) / (r * s * s * s));
                dx += upstream[i] * dy_i_dx_j;
            }
            out[3][j * c + col] = dx;
        }
    }
    out
}

/// Runs the batch-norm op (training) on `rows × c` values in `T` and compares output, running statistics
/// and gradients with [`reference_batch_norm`] on the same values; `tol` bounds |got − want| / (1 + |want|).
fn batch_norm_matches_plain_loops<T: peerlm::Float>(rows: usize, c: usize, seed: u64, tol: f64) {
    let mut rng = peerlm::Rng::new(seed);
    let to_t = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
    // Columns with their own offset and scale, so no statistic is trivially 0 or 1.
    let x: Vec<f64> =
        (0..rows * c).map(|i| 0.5 + (i % c) as f64 * 0.7 + (1.0 + (i % c) as f64) * rng.normal()).collect();
    let w: Vec<f64> = (0..rows * c).map(|_| rng.normal()).collect();
    let gain: Vec<f64> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    let bias: Vec<f64> = (0..c).map(|_| rng.normal()).collect();
    let (x, w, gain, bias) = (to_t(x), to_t(w), to_t(gain), to_t(bias));
    let mut stats = BatchNormStats {
        mean: to_t((0..c).map(|_| rng.normal()).collect()),
        var: to_t((0..c).map(|_| 0.5 + rng.uniform()).collect()),
        momentum: 0.3,
    };
    let as_f64 = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    let want = reference_batch_norm(
        &as_f64(&x),
        &as_f64(&w),
        &as_f64(&gain),
        &as_f64(&bias),
        (&as_f64(&stats.mean), &as_f64(&stats.var), stats.momentum),
        1e-5,
    );

    let xp = Param::new("x", ParamKind::Weight, Tensor::from_vec(&[rows, c], x));
    let gp = Param::new("gain", ParamKind::NoDecay, Tensor::from_vec(&[c], gain));
    let bp = Param::new("bias", ParamKind::NoDecay, Tensor::from_vec(&[c], bias));
    let mut tape = Tape::new();
    let (xv, gv, bv) = (tape.param(&xp), tape.param(&gp), tape.param(&bp));
    let wv = tape.constant(Tensor::from_vec(&[rows, c], w));
    let y = ops::batch_norm(&mut tape, &xv, &gv, &bv, &mut stats, true, 1e-5);
    let weighted = ops::mul(&mut tape, &y, &wv);
    let loss = ops::sum(&mut tape, &weighted);
    tape.backward(&loss);
    let grad = |p: &Param<T>| as_f64(tape.grad(p).unwrap().to_dense().data());
    let got = [as_f64(y.value().data()), as_f64(&stats.mean), as_f64(&stats.var), grad(&xp), grad(&gp), grad(&bp)];
    let names = ["y", "running mean", "running var", "dx", "dgain", "dbias"];
    for ((what, g), r) in names.iter().zip(&got).zip(&want) {
        let (worst, at) = g
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .enumerate()
            .fold((0.0, 0), |(m, at), (i, e)| if e > m { (e, i) } else { (m, at) });
        assert!(worst <= tol, "{} {rows}×{c}, {what}[{at}]: {} vs {} (error {worst:.2e})", T::NAME, g[at], r[at]);
    }
}

/// 600 and 513 rows are 3 chunks of the op's 256-row work items, the last one partial (513: one row).
#[test]
fn batch_norm_over_several_row_chunks_matches_plain_loops() {
    for (rows, c, seed) in [(600, 5, 1), (513, 3, 2)] {
        batch_norm_matches_plain_loops::<f64>(rows, c, seed, 1e-12);
        batch_norm_matches_plain_loops::<f32>(rows, c, seed, 1e-5);
    }
}

/// The finite-difference check on an input of several row chunks (the proptest in `grad_sparse.rs` stays
/// below one chunk).
#[test]
fn batch_norm_training_gradient_over_several_row_chunks() {
    for (rows, c, seed) in [(600, 5, 3), (513, 3, 4)] {
        let x = tensor(&[rows, c], -2.0, 2.0, seed);
        let gain = tensor(&[c], 0.5, 1.5, seed ^ 1);
        let bias = tensor(&[c], -1.0, 1.0, seed ^ 2);
        let check = common::Check { max_coords: 200, ..common::Check::default() };
        common::check_gradients_with(check, &[x, gain, bias], |t, v| {
            let mut stats = BatchNormStats::new(c, 0.1);
            ops::batch_norm(t, &v[0], &v[1], &v[2], &mut stats, true, 1e-5)
        })
        .unwrap();
    }
}
