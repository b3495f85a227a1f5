//! Gradient checks for layer norm and RMS norm (input, gain and bias), on rank 2 and 3, plus checks that
//! the large-tensor (threaded) path equals the small (single-thread) one and a plain-loop reference.

mod common;

use common::{check_gradients, shape, tensor};
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
