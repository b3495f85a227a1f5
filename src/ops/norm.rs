//! Layer normalisation and RMS normalisation over the last axis, each one fused op.
//!
//! Layer norm (Ba et al. 2016): `y = (x − mean)·rstd ⊙ gain + bias` with `rstd = 1/√(var + eps)`, per row.
//! RMS norm (Zhang & Sennrich 2019): `y = x·rstd ⊙ gain` with `rstd = 1/√(mean(x²) + eps)`.
//! Forward keeps each row's mean and rstd; backward then needs one pass per row (llm.c's
//! `layernorm_backward`): with `x̂ = (x − mean)·rstd` and `dx̂ = dy ⊙ gain`,
//! `dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))` (RMS norm drops the `mean(dx̂)` term, having no mean to
//! subtract), `dgain = Σ_rows dy ⊙ x̂`, `dbias = Σ_rows dy`.
//!
//! Rows are processed in fixed chunks of [`ROWS_PER_CHUNK`], in parallel when the tensor is large. The
//! gain and bias gradients are summed per chunk and the chunk sums added in chunk order, so the result
//! is the same whatever the number of threads.

use std::mem::MaybeUninit;

use crate::grad::Grad;
use crate::kernels::{memory, Float, Lanes, SimdVec};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Rows per task; fixed, so summation order never depends on the thread count.
const ROWS_PER_CHUNK: usize = 64;
/// Below this many elements the chunks run on the calling thread (same chunks, same order).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Layer norm (`centered`, with bias) or RMS norm, with the per-row statistics its backward needs.
struct Norm<T> {
    centered: bool,
    eps: f64,
    /// Per row: (mean, rstd); the mean is 0 for RMS norm.
    stats: Vec<(T, T)>,
}

impl<T: Float> Norm<T> {
    fn name(&self) -> &'static str {
        if self.centered {
            "layer_norm"
        } else {
            "rms_norm"
        }
    }

    fn check(&self, x: &Tensor<T>, params: &[&Tensor<T>]) -> usize {
        let d = x.last_dim();
        assert!(x.rank() >= 1 && d > 0, "{}: cannot normalise rows of shape {:?}", self.name(), x.shape());
        for p in params {
            assert!(
                p.shape() == [d],
                "{}: gain/bias of shape {:?} for input {:?} (want [{d}])",
                self.name(),
                p.shape(),
                x.shape()
            );
        }
        d
    }

    /// Mean and rstd of one row.
    fn row_stats(&self, row: &[T]) -> (T, T) {
        let d = T::from_usize(row.len());
        let mean =
            if self.centered { simd_sum(row.len(), |j| T::Simd::load(&row[j..]), |j| row[j]) / d } else { T::ZERO };
        let m = T::Simd::splat(mean);
        let var = simd_sum(
            row.len(),
            |j| {
                let v = T::Simd::load(&row[j..]) - m;
                v * v
            },
            |j| (row[j] - mean) * (row[j] - mean),
        ) / d;
        (mean, T::ONE / (var + T::from_f64(self.eps)).sqrt())
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

/// Smallest number of chunks a rayon task takes: all of them (so the calling thread runs them in order,
/// with no task spawned) when the tensor is too small to be worth threads.
fn min_chunks_per_task(numel: usize) -> usize {
    if numel >= PARALLEL_MIN_ELEMENTS {
        1
    } else {
        usize::MAX
    }
}

impl<T: Float> Op<T> for Norm<T> {
    fn name(&self) -> &'static str {
        Norm::name(self)
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let d = self.check(x[0], &x[1..]);
        let (x_data, gain, bias) = (x[0].data(), x[1].data(), x.get(2).map(|b| b.data()));
        let this = &*self;
        let chunk_len = ROWS_PER_CHUNK * d;
        let min_chunks = min_chunks_per_task(x[0].numel());
        // SAFETY: the chunk's x rows are as many and as wide as its output rows (same offsets, `check`
        // fixed d), and `normalise_row` writes every element of each output row.
        let (out, chunk_stats) = unsafe {
            memory::par_vec_uninit(x[0].numel(), chunk_len, min_chunks, |chunk, out_chunk| {
                let x_chunk = &x_data[chunk * chunk_len..][..out_chunk.len()];
                let rows = out_chunk.chunks_mut(d).zip(x_chunk.chunks(d));
                rows.map(|(y, xr)| this.normalise_row(y, xr, gain, bias)).collect::<Vec<_>>()
            })
        };
        self.stats = chunk_stats.concat();
        Tensor::from_vec(x[0].shape(), out)
    }

    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let d = x[0].last_dim();
        let (x_data, g_data, gain) = (x[0].data(), g.data(), x[1].data());
        let chunk_len = ROWS_PER_CHUNK * d;
        let min_chunks = min_chunks_per_task(x[0].numel());
        let rows = x[0].numel() / d.max(1);
        assert_eq!(self.stats.len(), rows, "{}: backward without a forward on this input", self.name());
        // Per chunk: partial sums of dgain and dbias, combined below in chunk order.
        // SAFETY: there is one (mean, rstd) per row (asserted above), so the zip below reaches every
        // d-wide row of the chunk, and `backward_row` writes every element of each.
        let (dx, partials) = unsafe {
            memory::par_vec_uninit(x[0].numel(), chunk_len, min_chunks, |chunk, dx_chunk| {
                let start = chunk * chunk_len;
                let (x_chunk, g_chunk) = (&x_data[start..][..dx_chunk.len()], &g_data[start..][..dx_chunk.len()]);
                let stat_chunk = &self.stats[chunk * ROWS_PER_CHUNK..];
                let mut dgain = vec![T::ZERO; d];
                let mut dbias = vec![T::ZERO; d];
                let rows = dx_chunk.chunks_mut(d).zip(stat_chunk).zip(x_chunk.chunks(d)).zip(g_chunk.chunks(d));
                for (((dxr, &(mean, rstd)), xr), gr) in rows {
                    self.backward_row(dxr, xr, gr, gain, mean, rstd, &mut dgain, &mut dbias);
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
        let mut grads = vec![
            needs[0].then(|| Grad::Dense(Tensor::from_vec(x[0].shape(), dx))),
            needs[1].then(|| Grad::Dense(Tensor::from_vec(&[d], dgain))),
        ];
        if self.centered {
            grads.push(needs[2].then(|| Grad::Dense(Tensor::from_vec(&[d], dbias))));
        }
        grads
    }
}

impl<T: Float> Norm<T> {
    /// One row of the forward: writes every element of `y` and returns the row's (mean, rstd).
    fn normalise_row(&self, y: &mut [MaybeUninit<T>], x: &[T], gain: &[T], bias: Option<&[T]>) -> (T, T) {
        let same_len = y.len() == x.len() && gain.len() == x.len() && bias.is_none_or(|b| b.len() == x.len());
        assert!(same_len, "{}: row lengths differ", self.name());
        let (mean, rstd) = self.row_stats(x);
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
    fn backward_row(
        &self,
        dx: &mut [MaybeUninit<T>],
        x: &[T],
        g: &[T],
        gain: &[T],
        mean: T,
        rstd: T,
        dgain: &mut [T],
        dbias: &mut [T],
    ) {
        assert!(dx.len() == x.len() && g.len() == x.len(), "{}: row lengths differ", self.name());
        let (len, d) = (x.len(), T::from_usize(x.len()));
        let (mean_v, rstd_v) = (T::Simd::splat(mean), T::Simd::splat(rstd));
        let load = |v: &[T], j: usize| T::Simd::load(&v[j..]);
        // mean(dx̂) and mean(dx̂ ⊙ x̂) over the row.
        let mean_dxhat =
            if self.centered { simd_sum(len, |j| load(g, j) * load(gain, j), |j| g[j] * gain[j]) / d } else { T::ZERO };
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
}

/// Layer norm over the last axis: `(x − mean)/√(var + eps) ⊙ gain + bias`, with `gain` and `bias` of shape
/// `[d]` for `x` of shape `[..., d]`.
pub fn layer_norm<T: Float>(tape: &mut Tape<T>, x: &Var<T>, gain: &Var<T>, bias: &Var<T>, eps: f64) -> Var<T> {
    tape.apply(Norm { centered: true, eps, stats: Vec::new() }, &[x, gain, bias])
}

/// RMS norm over the last axis: `x/√(mean(x²) + eps) ⊙ gain`, with `gain` of shape `[d]`.
pub fn rms_norm<T: Float>(tape: &mut Tape<T>, x: &Var<T>, gain: &Var<T>, eps: f64) -> Var<T> {
    tape.apply(Norm { centered: false, eps, stats: Vec::new() }, &[x, gain])
}
