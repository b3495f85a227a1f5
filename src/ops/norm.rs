//! Layer normalisation and RMS normalisation over the last axis, each one fused op.
//!
//! Layer norm (Ba et al. 2016): `y = (x − mean)·rstd ⊙ gain + bias` with `rstd = 1/√(var + eps)`, per row.
//! RMS norm (Zhang & Sennrich 2019): `y = x·rstd ⊙ gain` with `rstd = 1/√(mean(x²) + eps)`.
//! The row loops, forward and backward, are `kernels/norm.rs`; this file checks shapes and records the op.

use crate::grad::Grad;
use crate::kernels::{norm, Float};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

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

    fn check(&self, x: &Tensor<T>, gain: &Tensor<T>, bias: Option<&Tensor<T>>) -> usize {
        let d = x.last_dim();
        assert!(x.rank() >= 1 && d > 0, "{}: cannot normalise rows of shape {:?}", self.name(), x.shape());
        for p in [Some(gain), bias].into_iter().flatten() {
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
}

impl<T: Float> Op<T> for Norm<T> {
    fn name(&self) -> &'static str {
        Norm::name(self)
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let (x, gain, bias) = match *inputs {
            [x, gain] => (x, gain, None),
            [x, gain, bias] => (x, gain, Some(bias)),
            _ => unreachable!("layer_norm takes x, gain, bias; rms_norm takes x, gain"),
        };
        let d = self.check(x, gain, bias);
        let (y, stats) = norm::forward(x.data(), d, gain.data(), bias.map(Tensor::data), self.centered, self.eps);
        self.stats = stats;
        Tensor::from_vec(x.shape(), y)
    }

    // In the forward pass this was y = x̂ ⊙ gain (+ bias), x̂ = (x − mean)·rstd per row (kept in `stats`), so
    // now dgain = Σ_rows g ⊙ x̂, dbias = Σ_rows g and, with dx̂ = g ⊙ gain,
    // dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)) (RMS norm: mean 0, no mean(dx̂) term).
    fn backward(&self, inputs: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x, gain, ..] = inputs else { unreachable!("layer_norm takes x, gain, bias; rms_norm takes x, gain") };
        let d = x.last_dim();
        assert_eq!(self.stats.len(), x.numel() / d.max(1), "{}: backward without a forward on this input", self.name());
        let (dx, dgain, dbias) = norm::backward(x.data(), g.data(), d, gain.data(), &self.stats, self.centered);
        let mut grads = vec![
            needs[0].then(|| Grad::Dense(Tensor::from_vec(x.shape(), dx))),
            needs[1].then(|| Grad::Dense(Tensor::from_vec(&[d], dgain))),
        ];
        if self.centered {
            grads.push(needs[2].then(|| Grad::Dense(Tensor::from_vec(&[d], dbias))));
        }
        grads
    }
}

/// Layer norm over the last axis: `(x − mean)/√(var + eps) ⊙ gain + bias`, with `gain` and `bias` of shape
/// `[d]` for `x` of shape `[..., d]`.
///
/// # Panics
/// If `x` is a scalar or its last axis is empty, or `gain` or `bias` is not `[d]`.
pub fn layer_norm<T: Float>(tape: &mut Tape<T>, x: &Var<T>, gain: &Var<T>, bias: &Var<T>, eps: f64) -> Var<T> {
    tape.apply(Norm { centered: true, eps, stats: Vec::new() }, &[x, gain, bias])
}

/// RMS norm over the last axis: `x/√(mean(x²) + eps) ⊙ gain`, with `gain` of shape `[d]`.
///
/// # Panics
/// If `x` is a scalar or its last axis is empty, or `gain` is not `[d]`.
pub fn rms_norm<T: Float>(tape: &mut Tape<T>, x: &Var<T>, gain: &Var<T>, eps: f64) -> Var<T> {
    tape.apply(Norm { centered: false, eps, stats: Vec::new() }, &[x, gain])
}
