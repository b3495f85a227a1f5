//! Softmax and log-softmax over the last axis, each row on its own.
//!
//! Both subtract the row maximum before exponentiating (softmax is unchanged by a shift), so logits of
//! 10⁴ give exp(0) = 1 rather than ∞. Backward uses the output only:
//! - softmax `y = eˣ / Σeˣ` has Jacobian `diag(y) − y yᵀ`, so `dx = y ⊙ (g − Σ g⊙y)`;
//! - log-softmax `y = x − ln Σeˣ` has Jacobian `I − 1 softmax(x)ᵀ`, so `dx = g − eʸ Σ g`.
//!
//! The row loops are `kernels::vector`'s (causal attention uses the same two for its probabilities); rows
//! run on threads when the tensor is large.

use crate::grad::Grad;
use crate::kernels::vector::{for_each_row, log_softmax_row, softmax_backward_row, softmax_row, sum, zip_map};
use crate::kernels::{Float, Lanes};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct Softmax {
    log: bool,
}

impl<T: Float> Op<T> for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("softmax takes x") };
        let (data, width) = (x.data(), x.last_dim());
        let mut y = vec![T::ZERO; data.len()];
        let row_fn = if self.log { log_softmax_row } else { softmax_row };
        for_each_row(&mut y, width, width, |row, out| row_fn(&data[row * width..][..width], out));
        Tensor::from_vec(x.shape(), y)
    }

    // In the forward pass this was y = softmax(x) per row, so now dx = y ⊙ (g − Σ g⊙y); for log-softmax,
    // y = x − ln Σeˣ, so now dx = g − eʸ·Σg. Both from y and g alone.
    fn backward(&self, inputs: &[&Tensor<T>], y: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("softmax takes x") };
        let width = x.last_dim();
        let mut dx = vec![T::ZERO; y.numel()];
        let (y, g) = (y.data(), g.data());
        for_each_row(&mut dx, width, width, |row, d| {
            let (y, g) = (&y[row * width..][..width], &g[row * width..][..width]);
            if self.log {
                let total = sum(g);
                let tv = T::Simd::splat(total);
                zip_map([y, g], d, |[y, g]| g - y.exp() * tv, |[y, g]| g - y.exp() * total);
            } else {
                softmax_backward_row(y, g, d);
            }
        });
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Softmax over the last axis: each row becomes positive and sums to 1.
pub fn softmax<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Softmax { log: false }, &[x])
}

/// Log-softmax over the last axis, `x − ln Σ exp(x)` per row; more accurate than `log(softmax(x))` for
/// very negative entries, which would round to `ln 0`.
pub fn log_softmax<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Softmax { log: true }, &[x])
}
