//! GELU, the activation of the dense feed-forward layer (`ops::gelu`) and of PEER's experts
//! (`kernels::peer`), by GPT-2's tanh approximation:
//!
//! ```text
//! y  = ½x(1 + t),                          t = tanh(u),  u = √(2/π)(x + 0.044715x³)
//! y' = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)
//! ```
//!
//! Written once over [`Lanes`], so one function serves a SIMD vector and a scalar. The two polynomials
//! are multiply-adds; the dense layer's op has always fused them on SIMD vectors and the PEER kernel never
//! has ([`Fma`]), which changes the last bit of some values. Each keeps its own, so results and
//! checkpoints stay bit-identical to the ones already trained.

use super::{Float, Lanes};

/// √(2/π), the slope of the inner polynomial.
const SCALE: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient.
const CUBIC: f64 = 0.044715;

/// How `a·b + c` is evaluated in the two polynomials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fma {
    /// [`Lanes::mul_add`]: fused on SIMD vectors, a multiply then an add on scalars.
    Fused,
    /// A multiply, then an add, always.
    Separate,
}

#[inline(always)]
fn mul_add<T: Float, V: Lanes<T>>(a: V, b: V, c: V, fma: Fma) -> V {
    match fma {
        Fma::Fused => a.mul_add(b, c),
        Fma::Separate => a * b + c,
    }
}

/// `t = tanh(√(2/π)(x + 0.044715x³))`.
#[inline(always)]
fn tanh_inner<T: Float, V: Lanes<T>>(x: V, fma: Fma) -> V {
    let (scale, cubic) = (V::splat(T::from_f64(SCALE)), V::splat(T::from_f64(CUBIC)));
    (scale * mul_add(cubic * x * x, x, x, fma)).tanh()
}

/// `y = ½x(1 + t)`.
#[inline(always)]
pub(crate) fn gelu<T: Float, V: Lanes<T>>(x: V, fma: Fma) -> V {
    let (half, one) = (V::splat(T::from_f64(0.5)), V::splat(T::ONE));
    half * x * (one + tanh_inner(x, fma))
}

/// `g · y'(x)`: the gradient of GELU at `x` scaled by the upstream gradient `g` (1 for y' alone).
#[inline(always)]
pub(crate) fn gelu_grad<T: Float, V: Lanes<T>>(x: V, g: V, fma: Fma) -> V {
    let (half, one) = (V::splat(T::from_f64(0.5)), V::splat(T::ONE));
    let t = tanh_inner(x, fma);
    let du = V::splat(T::from_f64(SCALE)) * mul_add(V::splat(T::from_f64(3.0 * CUBIC)) * x, x, one, fma);
    g * half * ((one + t) + x * (one - t * t) * du)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivative_matches_finite_difference() {
        for i in -40..40 {
            let x = i as f64 * 0.1 + 0.013;
            for fma in [Fma::Fused, Fma::Separate] {
                let numeric = (gelu(x + 1e-6, fma) - gelu(x - 1e-6, fma)) / 2e-6;
                assert!((gelu_grad(x, 1.0, fma) - numeric).abs() < 1e-8, "x = {x}");
            }
        }
    }
}
