//! Inverted dropout (Srivastava et al. 2014): during training each element is zeroed with probability
//! `p` and the survivors are scaled by `1/(1 − p)`, so the expected output equals the input and
//! evaluation needs no rescaling (it simply skips the op).
//!
//! The mask is drawn from the caller's [`Rng`] before the op runs, so a seeded run drops the same
//! elements every time, and is kept as the per-element factor (0 or `1/(1 − p)`): backward multiplies
//! the upstream gradient by the very same factors.

use crate::grad::Grad;
use crate::kernels::vector::mul;
use crate::kernels::Float;
use crate::rng::Rng;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct Dropout<T> {
    /// 0 for a dropped element, `1/(1 − p)` for a kept one.
    factors: Vec<T>,
}

impl<T: Float> Op<T> for Dropout<T> {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("dropout takes x") };
        let mut y = vec![T::ZERO; x.numel()];
        mul(x.data(), &self.factors, &mut y);
        Tensor::from_vec(x.shape(), y)
    }

    // In the forward pass this was y = x ⊙ factors (0 or 1/(1 − p) per element), so now dx = g ⊙ factors,
    // the same mask.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("dropout takes x") };
        let mut dx = vec![T::ZERO; g.numel()];
        mul(g.data(), &self.factors, &mut dx);
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Inverted dropout with drop probability `p` in `[0, 1)`, its mask drawn from `rng` (one uniform per
/// element, in order). Returns `x` itself, recording nothing and drawing nothing, when `p == 0` or the
/// tape is not recording (evaluation).
///
/// # Panics
/// If `p` is outside `[0, 1)`.
pub fn dropout<T: Float>(tape: &mut Tape<T>, x: &Var<T>, p: f64, rng: &mut Rng) -> Var<T> {
    assert!((0.0..1.0).contains(&p), "dropout: probability {p} is outside [0, 1)");
    if p == 0.0 || !tape.is_recording() {
        return x.clone();
    }
    let keep_scale = T::from_f64(1.0 / (1.0 - p));
    let factors = (0..x.value().numel()).map(|_| if rng.uniform() < p { T::ZERO } else { keep_scale }).collect();
    tape.apply(Dropout { factors }, &[x])
}
