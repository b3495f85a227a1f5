//! Batch normalisation of the retrieval queries (He 2024, §2 uses it on PEER's queries, following
//! Lample et al. 2019, who found it spreads the queries over the keys so more experts get used).
//!
//! For x `[R, C]` each column c is normalised over the R rows, then scaled and shifted:
//!
//! ```text
//! x̂[r,c] = (x[r,c] − μ_c) / √(σ²_c + eps),      y[r,c] = γ_c·x̂[r,c] + β_c.
//! ```
//!
//! In training μ and σ² are the batch's (σ² biased, as in PyTorch), and a running average is updated for
//! evaluation, with the unbiased variance: `running = (1 − momentum)·running + momentum·batch`. In
//! evaluation the running statistics are used, and the op is a plain per-column affine map.
//!
//! Backward in training goes through μ and σ² too. With g = dL/dy and ĝ = g·γ (dL/dx̂), per column:
//!
//! ```text
//! dx = (ĝ − mean_r(ĝ) − x̂·mean_r(ĝ·x̂)) / √(σ² + eps),   dγ = Σ_r g·x̂,   dβ = Σ_r g.
//! ```
//!
//! PEER normalises R = tokens·heads rows (32768 for 4096 tokens and 8 heads), so every loop runs in
//! parallel over fixed chunks of rows; the column sums add up the chunks' partial sums in chunk order.

use crate::kernels::parallel::prelude::*;

use crate::grad::Grad;
use crate::kernels::Float;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Running statistics of a batch-norm layer, updated by each training call.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormStats<T> {
    /// Running mean per column.
    pub mean: Vec<T>,
    /// Running (unbiased) variance per column.
    pub var: Vec<T>,
    /// Weight of the new batch in the running average (PyTorch's default is 0.1).
    pub momentum: f64,
}

impl<T: Float> BatchNormStats<T> {
    /// Mean 0 and variance 1 for `channels` columns, as PyTorch initialises them.
    pub fn new(channels: usize, momentum: f64) -> Self {
        BatchNormStats { mean: vec![T::ZERO; channels], var: vec![T::ONE; channels], momentum }
    }

    fn update(&mut self, batch_mean: &[T], batch_var_unbiased: &[T]) {
        let keep = T::from_f64(1.0 - self.momentum);
        let take = T::from_f64(self.momentum);
        for (running, &batch) in self.mean.iter_mut().zip(batch_mean) {
            *running = keep * *running + take * batch;
        }
        for (running, &batch) in self.var.iter_mut().zip(batch_var_unbiased) {
            *running = keep * *running + take * batch;
        }
    }
}

/// Rows per parallel work item. The chunks depend on the shape only, so every sum has a fixed order and
/// results are bit-identical on any number of threads (timings: docs/PERFORMANCE.md, issue 17 section).
const ROW_CHUNK: usize = 256;

struct BatchNorm<T> {
    /// Whether μ and σ² come from the batch (training), so the backward must go through them.
    batch_stats: bool,
    eps: f64,
    /// μ per column: the batch's (found by the forward) in training, the running one in evaluation.
    mean: Vec<T>,
    /// 1/√(σ² + eps) per column, likewise.
    inv_std: Vec<T>,
    /// In training, the batch's unbiased variance per column, for the running statistics.
    unbiased_var: Vec<T>,
}

impl<T: Float> BatchNorm<T> {
    /// dx from g, given `sums` = [Σ_r g ; Σ_r g·x̂] per column.
    fn input_grad(&self, x: &Tensor<T>, gain: &Tensor<T>, g: &Tensor<T>, sums: &[T]) -> Vec<T> {
        let (input, gain, c) = (x.data(), gain.data(), x.last_dim());
        let inv_rows = T::ONE / T::from_usize(input.len() / c);
        let means: Vec<T> = sums.iter().map(|&s| s * inv_rows).collect();
        let (mean_g, mean_g_xhat) = means.split_at(c);
        let scale: Vec<T> = gain.iter().zip(&self.inv_std).map(|(&gain, &inv_std)| gain * inv_std).collect();
        let mut dx = vec![T::ZERO; input.len()];
        let rows = dx.par_chunks_mut(ROW_CHUNK * c).zip(input.par_chunks(ROW_CHUNK * c));
        rows.zip(g.data().par_chunks(ROW_CHUNK * c)).for_each(|((dx, input), g)| {
            for ((dx_row, row), g_row) in dx.chunks_exact_mut(c).zip(input.chunks_exact(c)).zip(g.chunks_exact(c)) {
                let columns = self.mean.iter().zip(&self.inv_std).zip(mean_g.iter().zip(mean_g_xhat)).zip(&scale);
                for (((d, &v), &g), (((&mean, &inv_std), (&mean_g, &mean_g_xhat)), &scale)) in
                    dx_row.iter_mut().zip(row).zip(g_row).zip(columns)
                {
                    let d_xhat = if self.batch_stats { g - mean_g - (v - mean) * inv_std * mean_g_xhat } else { g };
                    *d = d_xhat * scale;
                }
            }
        });
        dx
    }
}

impl<T: Float> Op<T> for BatchNorm<T> {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[input, gain, bias] = inputs else { unreachable!("batch_norm takes x, gain, bias") };
        let (gain, bias, c) = (gain.data(), bias.data(), input.last_dim());
        if self.batch_stats {
            let (mean, var) = column_stats(input.data(), c);
            let rows = (input.numel() / c) as f64;
            self.unbiased_var = var.iter().map(|&v| T::from_f64(v * rows / (rows - 1.0))).collect();
            self.mean = mean.into_iter().map(T::from_f64).collect();
            self.inv_std = var.into_iter().map(|v| inv_std(v, self.eps)).collect();
        }
        let mut out = vec![T::ZERO; input.numel()];
        out.par_chunks_mut(ROW_CHUNK * c).zip(input.data().par_chunks(ROW_CHUNK * c)).for_each(|(out, input)| {
            for (out_row, row) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)) {
                for ((((y, &v), &mean), &inv_std), (&gain, &bias)) in
                    out_row.iter_mut().zip(row).zip(&self.mean).zip(&self.inv_std).zip(gain.iter().zip(bias))
                {
                    *y = (v - mean) * inv_std * gain + bias;
                }
            }
        });
        Tensor::from_vec(input.shape(), out)
    }

    // In the forward pass this was y = γ·x̂ + β with x̂ = (x − μ)/√(σ² + eps); so now dβ = Σ_r g,
    // dγ = Σ_r g·x̂, and dx as in the module comment (through μ and σ² too in training).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x, gain, _] = inputs else { unreachable!("batch_norm takes x, gain, bias") };
        let (input, c) = (x.data(), x.last_dim());
        // Column sums of g and g·x̂ (side by side in one accumulator): dβ and dγ, and (over R) the two
        // means the dx formula needs.
        let sums = column_sums(input, 2 * c, c, |acc, row, r| {
            let g_row = &g.data()[r * c..(r + 1) * c];
            let (sum_g, sum_g_xhat) = acc.split_at_mut(c);
            let columns = self.mean.iter().zip(&self.inv_std).zip(sum_g.iter_mut().zip(sum_g_xhat));
            for ((&v, &g), ((&mean, &inv_std), (sum_g, sum_g_xhat))) in row.iter().zip(g_row).zip(columns) {
                *sum_g += g;
                *sum_g_xhat += g * ((v - mean) * inv_std);
            }
        });
        let (sum_g, sum_g_xhat) = sums.split_at(c);
        let d_input = needs[0].then(|| Grad::Dense(Tensor::from_vec(x.shape(), self.input_grad(x, gain, g, &sums))));
        let d_gain = needs[1].then(|| Grad::Dense(Tensor::from_vec(&[c], sum_g_xhat.to_vec())));
        let d_bias = needs[2].then(|| Grad::Dense(Tensor::from_vec(&[c], sum_g.to_vec())));
        vec![d_input, d_gain, d_bias]
    }
}

/// Sums `width` accumulators over the rows of `x` `[rows, c]`: `add(acc, row, r)` adds row `r`'s terms.
/// Chunks of [`ROW_CHUNK`] rows are summed in parallel and their partial sums added in chunk order, so
/// the result depends on the shape only, not on the thread count.
fn column_sums<T: Float, A: Float>(
    x: &[T],
    width: usize,
    c: usize,
    add: impl Fn(&mut [A], &[T], usize) + Sync,
) -> Vec<A> {
    let partials: Vec<Vec<A>> = x
        .par_chunks(ROW_CHUNK * c)
        .enumerate()
        .map(|(chunk, rows)| {
            let mut acc = vec![A::ZERO; width];
            for (i, row) in rows.chunks_exact(c).enumerate() {
                add(&mut acc, row, chunk * ROW_CHUNK + i);
            }
            acc
        })
        .collect();
    let mut total = vec![A::ZERO; width];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, &p)| *t += p);
    }
    total
}

/// Column mean and biased variance of `x` `[rows, c]`, accumulated in f64 for accuracy.
fn column_stats<T: Float>(x: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (x.len() / c) as f64;
    let mut mean = column_sums(x, c, c, |acc: &mut [f64], row, _| {
        acc.iter_mut().zip(row).for_each(|(m, &v)| *m += v.to_f64());
    });
    mean.iter_mut().for_each(|m| *m /= rows);
    let mut var = column_sums(x, c, c, |acc: &mut [f64], row, _| {
        for ((s, &v), &m) in acc.iter_mut().zip(row).zip(&mean) {
            *s += (v.to_f64() - m) * (v.to_f64() - m);
        }
    });
    var.iter_mut().for_each(|s| *s /= rows);
    (mean, var)
}

/// Batch normalisation of `x` `[R, C]` over its rows, with per-column `gain` and `bias` `[C]`.
/// Training: normalises with the batch statistics (needs R ≥ 2) and updates `stats`; evaluation:
/// normalises with `stats`, which stay unchanged.
///
/// # Panics
/// If `x` is not `[R, C > 0]`, `gain`, `bias` or `stats` do not have C columns, or in training R < 2.
pub fn batch_norm<T: Float>(
    tape: &mut Tape<T>,
    x: &Var<T>,
    gain: &Var<T>,
    bias: &Var<T>,
    stats: &mut BatchNormStats<T>,
    training: bool,
    eps: f64,
) -> Var<T> {
    let shape = x.shape();
    assert!(shape.len() == 2 && shape[1] > 0, "batch_norm: x must be [R, C], got {shape:?}");
    let (rows, c) = (shape[0], shape[1]);
    assert!(
        gain.shape() == [c] && bias.shape() == [c] && stats.mean.len() == c && stats.var.len() == c,
        "batch_norm: gain {:?}, bias {:?} and {} running statistics must all have C = {c} columns",
        gain.shape(),
        bias.shape(),
        stats.mean.len()
    );
    let op = if training {
        assert!(rows >= 2, "batch_norm: training needs at least 2 rows for a variance, got {rows}");
        BatchNorm { batch_stats: true, eps, mean: Vec::new(), inv_std: Vec::new(), unbiased_var: Vec::new() }
    } else {
        let inv_std = stats.var.iter().map(|v| inv_std(v.to_f64(), eps)).collect();
        BatchNorm { batch_stats: false, eps, mean: stats.mean.clone(), inv_std, unbiased_var: Vec::new() }
    };
    let (y, ()) = tape.apply_then(op, &[x, gain, bias], |op| {
        if op.batch_stats {
            stats.update(&op.mean, &op.unbiased_var);
        }
    });
    y
}

/// 1/√(σ² + eps).
fn inv_std<T: Float>(var: f64, eps: f64) -> T {
    T::from_f64(1.0 / (var + eps).sqrt())
}
