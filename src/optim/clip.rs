//! Global gradient-norm clipping (Pascanu et al. 2013), as `torch.nn.utils.clip_grad_norm_`.
//!
//! The norm is taken over all parameters' gradients together, `‖g‖ = √(Σ_params Σ_i g_i²)`, and if it
//! exceeds `max_norm` every gradient is multiplied by `max_norm / (‖g‖ + 10⁻⁶)`: the direction of the
//! whole update is kept, only its length is bounded, so one bad batch cannot throw the model far.
//!
//! Row-sparse gradients are coalesced in place first: a row retrieved twice contributes
//! `(g₁ + g₂)²`, as in the dense gradient, not `g₁² + g₂²`. The optimizer then finds them coalesced.
//! Sums of squares are accumulated in f64 over fixed chunks combined in order, so the norm does not
//! depend on the number of threads.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::grad::Grad;
use crate::param::Param;
use crate::tape::Tape;

/// Elements per rayon task for the sum of squares and the rescaling.
const CHUNK: usize = 1 << 14;

/// Rescales the gradients of `params` on `tape` so their global norm is at most `max_norm`, and returns
/// the norm before clipping. A non-finite norm (an overflow or NaN somewhere) is returned as is and
/// nothing is scaled: the caller should skip the step.
pub fn clip_grad_norm(params: &[&Param], tape: &mut Tape, max_norm: f64) -> f64 {
    let mut seen = HashSet::new();
    let unique: Vec<&Param> = params.iter().copied().filter(|p| seen.insert(p.id())).collect();
    let mut sum_of_squares = 0.0;
    for param in &unique {
        if let Some(grad) = tape.grad_mut(param) {
            sum_of_squares += squared_norm(grad_values(grad));
        }
    }
    let norm = sum_of_squares.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        for param in &unique {
            if let Some(grad) = tape.grad_mut(param) {
                grad_values(grad).par_chunks_mut(CHUNK).for_each(|chunk| chunk.iter_mut().for_each(|g| *g *= scale));
            }
        }
    }
    norm
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
/// AVX2 registers, enough to hide the adder's latency.
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
}
