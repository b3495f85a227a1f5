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

struct BatchNorm<T> {
    /// μ per column: the batch's in training, the running one in evaluation.
    mean: Vec<T>,
    /// 1/√(σ² + eps) per column.
    inv_std: Vec<T>,
    /// Whether μ and σ² depend on x (training), so the backward must go through them.
    batch_stats: bool,
}

impl<T: Float> Op<T> for BatchNorm<T> {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (input, gain, bias) = (x[0], x[1].data(), x[2].data());
        let c = input.last_dim();
        let mut out = Vec::with_capacity(input.numel());
        for row in input.data().chunks_exact(c) {
            for col in 0..c {
                out.push((row[col] - self.mean[col]) * self.inv_std[col] * gain[col] + bias[col]);
            }
        }
        Tensor::from_vec(input.shape(), out)
    }

    fn backward(&self, x: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (input, gain) = (x[0], x[1].data());
        let c = input.last_dim();
        let rows = input.numel() / c;
        let x_hat = |r: usize, col: usize| (input.data()[r * c + col] - self.mean[col]) * self.inv_std[col];
        // Column sums of g and g·x̂: dβ and dγ, and (times γ) the two means the dx formula needs.
        let (mut sum_g, mut sum_g_xhat) = (vec![T::ZERO; c], vec![T::ZERO; c]);
        for (r, g_row) in g.data().chunks_exact(c).enumerate() {
            for col in 0..c {
                sum_g[col] += g_row[col];
                sum_g_xhat[col] += g_row[col] * x_hat(r, col);
            }
        }
        let d_input = needs[0].then(|| {
            let inv_rows = T::ONE / T::from_usize(rows);
            let mut dx = Vec::with_capacity(input.numel());
            for (r, g_row) in g.data().chunks_exact(c).enumerate() {
                for col in 0..c {
                    let mut d_xhat = g_row[col];
                    if self.batch_stats {
                        d_xhat = d_xhat - sum_g[col] * inv_rows - x_hat(r, col) * sum_g_xhat[col] * inv_rows;
                    }
                    dx.push(d_xhat * gain[col] * self.inv_std[col]);
                }
            }
            Grad::Dense(Tensor::from_vec(input.shape(), dx))
        });
        let d_gain = needs[1].then(|| Grad::Dense(Tensor::from_vec(&[c], sum_g_xhat)));
        let d_bias = needs[2].then(|| Grad::Dense(Tensor::from_vec(&[c], sum_g)));
        vec![d_input, d_gain, d_bias]
    }
}

/// Column mean and biased variance of `x` `[rows, c]`, accumulated in f64 for accuracy.
fn column_stats<T: Float>(x: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (x.len() / c) as f64;
    let mut mean = vec![0.0; c];
    for row in x.chunks_exact(c) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v.to_f64());
    }
    mean.iter_mut().for_each(|m| *m /= rows);
    let mut var = vec![0.0; c];
    for row in x.chunks_exact(c) {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v.to_f64() - m) * (v.to_f64() - m);
        }
    }
    var.iter_mut().for_each(|s| *s /= rows);
    (mean, var)
}

/// Batch normalisation of `x` `[R, C]` over its rows, with per-column `gain` and `bias` `[C]`.
/// Training: normalises with the batch statistics (needs R ≥ 2) and updates `stats`; evaluation:
/// normalises with `stats`, which stay unchanged.
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
    let inv_std_of = |var: f64| T::from_f64(1.0 / (var + eps).sqrt());
    let op = if training {
        assert!(rows >= 2, "batch_norm: training needs at least 2 rows for a variance, got {rows}");
        let (mean, var) = column_stats(x.value().data(), c);
        let unbiased: Vec<T> = var.iter().map(|&v| T::from_f64(v * rows as f64 / (rows - 1) as f64)).collect();
        let mean: Vec<T> = mean.into_iter().map(T::from_f64).collect();
        stats.update(&mean, &unbiased);
        BatchNorm { mean, inv_std: var.into_iter().map(inv_std_of).collect(), batch_stats: true }
    } else {
        let inv_std = stats.var.iter().map(|v| inv_std_of(v.to_f64())).collect();
        BatchNorm { mean: stats.mean.clone(), inv_std, batch_stats: false }
    };
    tape.apply(op, &[x, gain, bias])
}
