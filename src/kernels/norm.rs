//! The row loops of layer norm and RMS norm (`ops/norm.rs` records them on the tape and checks shapes).
//!
//! Layer norm (`centered`): `y = (x − mean)·rstd ⊙ gain + bias` with `rstd = 1/√(var + eps)`, per row;
//! RMS norm: `y = x·rstd ⊙ gain` with `rstd = 1/√(mean(x²) + eps)`. [`forward`] returns each row's mean
//! and rstd, and [`backward`] takes them back (llm.c's `layernorm_backward`): with `x̂ = (x − mean)·rstd`
//! and `dx̂ = dy ⊙ gain`, `dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))` (RMS norm drops the `mean(dx̂)`
//! term, having no mean to subtract), `dgain = Σ_rows dy ⊙ x̂`, `dbias = Σ_rows dy`.
//!
//! Rows are processed in fixed chunks of [`ROWS_PER_CHUNK`], in parallel when the tensor is large. The
//! gain and bias gradients are summed per chunk and the chunk sums added in chunk order, so the result
//! is the same whatever the number of threads. Outputs are written without zeroing them first
//! ([`memory::par_vec_uninit`]): every row loop below writes every element of its row.

use std::mem::MaybeUninit;

use super::{memory, Float, Lanes, SimdVec};

/// Rows per task; fixed, so summation order never depends on the thread count.
const ROWS_PER_CHUNK: usize = 64;
/// Below this many elements the chunks run on the calling thread (same chunks, same order).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Normalises each `d`-wide row of `x`: returns y (shaped like x) and each row's (mean, rstd), the mean 0
/// unless `centered`. `bias` is added when given.
///
/// # Panics
/// If `d` is 0, `x` is not whole rows, or `gain` (or `bias`) is not `d` long.
pub fn forward<T: Float>(
    x: &[T],
    d: usize,
    gain: &[T],
    bias: Option<&[T]>,
    centered: bool,
    eps: f64,
) -> (Vec<T>, Vec<(T, T)>) {
    check_rows("norm::forward", x, d, gain, bias);
    let chunk_len = ROWS_PER_CHUNK * d;
    // SAFETY: each chunk of x is as long as its output chunk (same offsets), both whole d-wide rows
    // (checked above), and `normalise_row` writes every element of each output row.
    let (out, chunk_stats) = unsafe {
        memory::par_vec_uninit(x.len(), chunk_len, min_chunks_per_task(x.len()), |chunk, out_chunk| {
            let x_chunk = &x[chunk * chunk_len..][..out_chunk.len()];
            let rows = out_chunk.chunks_mut(d).zip(x_chunk.chunks(d));
            rows.map(|(y, xr)| normalise_row(y, xr, gain, bias, centered, eps)).collect::<Vec<_>>()
        })
    };
    (out, chunk_stats.concat())
}

/// The gradients of [`forward`] given dy (`g`) and the (mean, rstd) it returned: (dx, dgain, dbias).
///
/// # Panics
/// If `d` is 0, `x` is not whole rows, `g` is not shaped like `x`, `gain` is not `d` long or `stats` does
/// not hold one entry per row.
pub fn backward<T: Float>(
    x: &[T],
    g: &[T],
    d: usize,
    gain: &[T],
    stats: &[(T, T)],
    centered: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    check_rows("norm::backward", x, d, gain, None);
    assert_eq!(g.len(), x.len(), "norm::backward: dy of {} elements for x of {}", g.len(), x.len());
    assert_eq!(stats.len(), x.len() / d, "norm::backward: statistics of {} rows for {} rows", stats.len(), x.len() / d);
    let chunk_len = ROWS_PER_CHUNK * d;
    // Per chunk: partial sums of dgain and dbias, combined below in chunk order.
    // SAFETY: there is one (mean, rstd) per row (asserted above), so the zip below reaches every d-wide
    // row of the chunk, and `backward_row` writes every element of each.
    let (dx, partials) = unsafe {
        memory::par_vec_uninit(x.len(), chunk_len, min_chunks_per_task(x.len()), |chunk, dx_chunk| {
            let start = chunk * chunk_len;
            let (x_chunk, g_chunk) = (&x[start..][..dx_chunk.len()], &g[start..][..dx_chunk.len()]);
            let stat_chunk = &stats[chunk * ROWS_PER_CHUNK..];
            let mut dgain = vec![T::ZERO; d];
            let mut dbias = vec![T::ZERO; d];
            let rows = dx_chunk.chunks_mut(d).zip(stat_chunk).zip(x_chunk.chunks(d)).zip(g_chunk.chunks(d));
            for (((dxr, &(mean, rstd)), xr), gr) in rows {
                backward_row(dxr, xr, gr, gain, mean, rstd, centered, &mut dgain, &mut dbias);
            }
            (dgain, dbias)
        })
    };
    let mut dgain = vec![T::ZERO; d];
    let mut dbias = vec![T::ZERO; d];
    for (pg, pb) in &partials {
        dgain.iter_mut().zip(pg).for_each(|(acc, &v)| *acc += v);
        dbias.iter_mut().zip(pb).for_each(|(acc, &v)| *acc += v);
    }
    (dx, dgain, dbias)
}

fn check_rows<T>(what: &str, x: &[T], d: usize, gain: &[T], bias: Option<&[T]>) {
    assert!(d > 0 && x.len() % d == 0, "{what}: {} elements are not rows of {d}", x.len());
    assert_eq!(gain.len(), d, "{what}: gain of {} for rows of {d}", gain.len());
    assert!(bias.is_none_or(|b| b.len() == d), "{what}: bias of {} for rows of {d}", bias.map_or(0, |b| b.len()));
}

/// Smallest number of chunks a rayon task takes: all of them (so the calling thread runs them in order,
/// with no task spawned) when the tensor is too small to be worth threads.
fn min_chunks_per_task(numel: usize) -> usize {
    if numel >= PARALLEL_MIN_ELEMENTS {
        1
    } else {
        usize::MAX
    }
}

/// `Σ_{j < len} term(j)`, `LANES` terms at a time into one SIMD accumulator (`lanes(j)` gives terms
/// `j..j + LANES`), then the remainder one by one. A plain `for` sum is a chain of dependent adds the
/// compiler may not reorder; the vector accumulator runs `LANES` chains side by side.
fn simd_sum<T: Float>(len: usize, lanes: impl Fn(usize) -> T::Simd, one: impl Fn(usize) -> T) -> T {
    let full = len / T::LANES * T::LANES;
    let mut acc = T::Simd::splat(T::ZERO);
    for j in (0..full).step_by(T::LANES) {
        acc = acc + lanes(j);
    }
    acc.reduce_add() + (full..len).map(one).sum::<T>()
}

/// Mean and rstd of one row.
fn row_stats<T: Float>(row: &[T], centered: bool, eps: f64) -> (T, T) {
    let d = T::from_usize(row.len());
    let mean = if centered { simd_sum(row.len(), |j| T::Simd::load(&row[j..]), |j| row[j]) / d } else { T::ZERO };
    let m = T::Simd::splat(mean);
    let var = simd_sum(
        row.len(),
        |j| {
            let v = T::Simd::load(&row[j..]) - m;
            v * v
        },
        |j| (row[j] - mean) * (row[j] - mean),
    ) / d;
    (mean, T::ONE / (var + T::from_f64(eps)).sqrt())
}

/// One row of the forward: writes every element of `y` and returns the row's (mean, rstd).
fn normalise_row<T: Float>(
    y: &mut [MaybeUninit<T>],
    x: &[T],
    gain: &[T],
    bias: Option<&[T]>,
    centered: bool,
    eps: f64,
) -> (T, T) {
    let same_len = y.len() == x.len() && gain.len() == x.len() && bias.is_none_or(|b| b.len() == x.len());
    assert!(same_len, "norm::forward: row lengths differ");
    let (mean, rstd) = row_stats(x, centered, eps);
    match bias {
        Some(bias) => {
            for (((yj, &xj), &gj), &bj) in y.iter_mut().zip(x).zip(gain).zip(bias) {
                yj.write((xj - mean) * rstd * gj + bj);
            }
        }
        None => {
            for ((yj, &xj), &gj) in y.iter_mut().zip(x).zip(gain) {
                yj.write((xj - mean) * rstd * gj);
            }
        }
    }
    (mean, rstd)
}

/// One row of the backward: writes every element of dx, adds into the gain and bias gradient sums.
#[allow(clippy::too_many_arguments)]
fn backward_row<T: Float>(
    dx: &mut [MaybeUninit<T>],
    x: &[T],
    g: &[T],
    gain: &[T],
    mean: T,
    rstd: T,
    centered: bool,
    dgain: &mut [T],
    dbias: &mut [T],
) {
    assert!(dx.len() == x.len() && g.len() == x.len(), "norm::backward: row lengths differ");
    let (len, d) = (x.len(), T::from_usize(x.len()));
    let (mean_v, rstd_v) = (T::Simd::splat(mean), T::Simd::splat(rstd));
    let load = |v: &[T], j: usize| T::Simd::load(&v[j..]);
    // mean(dx̂) and mean(dx̂ ⊙ x̂) over the row.
    let mean_dxhat =
        if centered { simd_sum(len, |j| load(g, j) * load(gain, j), |j| g[j] * gain[j]) / d } else { T::ZERO };
    let mean_dxhat_xhat = simd_sum(
        len,
        |j| load(g, j) * load(gain, j) * ((load(x, j) - mean_v) * rstd_v),
        |j| g[j] * gain[j] * ((x[j] - mean) * rstd),
    ) / d;
    for j in 0..len {
        let xhat = (x[j] - mean) * rstd;
        let dxhat = g[j] * gain[j];
        dx[j].write(rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
        dgain[j] += g[j] * xhat;
        dbias[j] += g[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 loops of both formulas, one row at a time.
    fn reference(x: &[f64], d: usize, g: &[f64], gain: &[f64], bias: &[f64], centered: bool) -> [Vec<f64>; 4] {
        let (mut y, mut dx, mut dgain, mut dbias) = (vec![], vec![], vec![0.0; d], vec![0.0; d]);
        for (xr, gr) in x.chunks(d).zip(g.chunks(d)) {
            let n = d as f64;
            let mean = if centered { xr.iter().sum::<f64>() / n } else { 0.0 };
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
            let dxhat: Vec<f64> = gr.iter().zip(gain).map(|(a, b)| a * b).collect();
            let m1 = if centered { dxhat.iter().sum::<f64>() / n } else { 0.0 };
            let m2 = dxhat.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
            for j in 0..d {
                y.push(xhat[j] * gain[j] + if centered { bias[j] } else { 0.0 });
                dx.push(rstd * (dxhat[j] - m1 - xhat[j] * m2));
                dgain[j] += gr[j] * xhat[j];
                dbias[j] += gr[j];
            }
        }
        [y, dx, dgain, dbias]
    }

    #[test]
    fn rows_match_plain_loops_and_every_output_is_written() {
        // 150 rows: two full chunks of 64 and a short one; d = 13 leaves a SIMD tail in every row.
        let (rows, d) = (150, 13);
        let value = |i: usize, salt: usize| ((i * 37 + salt * 11) % 23) as f64 / 7.0 - 1.5;
        let x: Vec<f64> = (0..rows * d).map(|i| value(i, 1)).collect();
        let g: Vec<f64> = (0..rows * d).map(|i| value(i, 2)).collect();
        let gain: Vec<f64> = (0..d).map(|j| value(j, 3)).collect();
        let bias: Vec<f64> = (0..d).map(|j| value(j, 4)).collect();
        for centered in [true, false] {
            let (y, stats) = forward(&x, d, &gain, centered.then_some(&bias[..]), centered, 1e-5);
            let (dx, dgain, dbias) = backward(&x, &g, d, &gain, &stats, centered);
            let want = reference(&x, d, &g, &gain, &bias, centered);
            for (name, got, want) in [("y", &y, &want[0]), ("dx", &dx, &want[1]), ("dgain", &dgain, &want[2])] {
                assert_eq!(got.len(), want.len(), "{name}");
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() < 1e-9, "{name} (centered {centered}): {a} vs {b}");
                }
            }
            for (a, b) in dbias.iter().zip(&want[3]) {
                assert!((a - b).abs() < 1e-9, "dbias: {a} vs {b}");
            }
        }
    }
}
