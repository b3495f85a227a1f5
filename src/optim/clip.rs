//! Global gradient-norm clipping (Pascanu et al. 2013), computed as
//! `torch.nn.utils.clip_grad_norm_` computes it.
//!
//! The norm is taken over all parameters' gradients together, `‖g‖ = √(Σ_params Σ_i g_i²)`, and if it
//! exceeds `max_norm` every gradient is multiplied by `max_norm / (‖g‖ + 10⁻⁶)`: the direction of the
//! whole update is kept, only its length is bounded, so one bad batch cannot throw the model far.
//! [`grad_norm`] computes the norm and [`clip_factor`] the multiplier, which the optimizer applies as it
//! reads the gradients.
//!
//! Row-sparse gradients are coalesced in place first: a row retrieved twice contributes
//! `(g₁ + g₂)²`, as in the dense gradient, not `g₁² + g₂²`. The optimizer then finds them coalesced.
//! Sums of squares are accumulated in f64 over fixed chunks combined in order, so the norm does not
//! depend on the number of threads.

use std::collections::HashSet;

use crate::kernels::parallel::prelude::*;

use crate::grad::Grad;
use crate::param::Param;
use crate::tape::Tape;

/// Elements per rayon task for the sum of squares.
const CHUNK: usize = 1 << 14;

/// The global norm of the gradients of `params` on `tape` (a parameter listed twice counts once).
/// Row-sparse gradients are coalesced in place on the way, as the module comment explains.
pub fn grad_norm(params: &[&Param], tape: &mut Tape) -> f64 {
    let mut seen = HashSet::new();
    let mut sum_of_squares = 0.0;
    for param in params.iter().filter(|p| seen.insert(p.id())) {
        if let Some(grad) = tape.grad_mut(param) {
            sum_of_squares += squared_norm(grad_values(grad));
        }
    }
    sum_of_squares.sqrt()
}

/// What clipping multiplies every gradient by: `max_norm / (norm + 10⁻⁶)` when `norm` exceeds
/// `max_norm`, otherwise 1. A non-finite norm gives 1: there is no sensible direction to keep, and the
/// caller should skip the step.
///
/// The factor is not applied here: [`super::AdamW::step`] takes it as `grad_scale` and multiplies each
/// gradient element as it reads it. Rescaling in place first, as `clip_grad_norm_` does, would cost one
/// more read and write of every gradient; on a PEER layer those are a few hundred megabytes a step.
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    if norm.is_finite() && norm > max_norm {
        (max_norm / (norm + 1e-6)) as f32
    } else {
        1.0
    }
}

/// The gradient's values, coalescing a row-sparse one first.
fn grad_values(grad: &mut Grad) -> &mut [f32] {
    match grad {
        Grad::Dense(tensor) => tensor.data_mut(),
        Grad::Rows(rows) => {
            rows.coalesce();
            &mut rows.values
        }
    }
}

/// Independent running sums inside a chunk. One f64 sum is a chain of dependent additions, one per
/// element, and ran at a fraction of memory speed over a PEER layer's gradients; sixteen lanes fill four
/// AVX2 registers, enough to hide the adder's latency. Not the kernels' `MAX_LANES` (the widest SIMD vector,
/// f32x16): these are f64 accumulators, and their count fixes the summation order, so the norm's bits.
const LANES: usize = 16;

/// `Σ x²` in f64: per-chunk sums in parallel, added in chunk order (deterministic for any thread count).
fn squared_norm(values: &[f32]) -> f64 {
    let partial: Vec<f64> = values.par_chunks(CHUNK).map(chunk_squared_norm).collect();
    partial.iter().sum()
}

/// `Σ x²` of one chunk, in [`LANES`] interleaved partial sums added at the end.
fn chunk_squared_norm(chunk: &[f32]) -> f64 {
    let square = |x: f32| f64::from(x) * f64::from(x);
    let mut lanes = [0.0f64; LANES];
    let mut groups = chunk.chunks_exact(LANES);
    for group in &mut groups {
        lanes.iter_mut().zip(group).for_each(|(sum, &x)| *sum += square(x));
    }
    lanes.iter().sum::<f64>() + groups.remainder().iter().map(|&x| square(x)).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_a_plain_sum() {
        for len in [0, 1, 15, 16, 17, 1000, CHUNK + 3] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3).collect();
            let plain: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let lanes = squared_norm(&values);
            assert!((lanes - plain).abs() <= 1e-12 * plain.max(1.0), "len {len}: {lanes} vs {plain}");
        }
    }

    #[test]
    fn the_factor_bounds_the_norm_and_is_one_otherwise() {
        let factor = clip_factor(4.0, 1.0);
        assert_eq!(factor, (1.0 / (4.0 + 1e-6)) as f32);
        assert!((4.0 * f64::from(factor) - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(1.0, 1.0), 1.0, "a norm at the bound is left alone");
        assert_eq!(clip_factor(f64::NAN, 1.0), 1.0);
        assert_eq!(clip_factor(f64::INFINITY, 1.0), 1.0);
    }
}
