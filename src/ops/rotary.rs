//! Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", §3.4.2, eq. 34).
//!
//! Instead of adding a learned position vector to each token, RoPE turns each head's query and key
//! vectors by an angle that grows with the position. The columns of a head (width `dh`) are taken in
//! pairs `(2i, 2i + 1)`, and the pair of the token at absolute position `p` is rotated by `p·θ_i`, with
//! `θ_i = base^(−2i/dh)`:
//!
//! ```text
//! y[2i]     = x[2i]·cos(p·θ_i) − x[2i+1]·sin(p·θ_i)
//! y[2i + 1] = x[2i]·sin(p·θ_i) + x[2i+1]·cos(p·θ_i)
//! ```
//!
//! A query at position m and a key at position n then meet in the score `q_m·k_n` through their angle
//! difference `(m − n)·θ_i` only: attention sees relative positions, and no parameter is learned.
//!
//! The op is linear and each pair's map is a rotation, whose inverse is its transpose, so the backward
//! turns the upstream gradient by `−p·θ_i`: [`rotate`] serves both directions. Nothing but the angles'
//! cosines and sines (`[seq, dh/2]`) is kept.

use crate::grad::Grad;
use crate::kernels::vector::for_each_row;
use crate::kernels::Float;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// RoFormer's base: the slowest pair turns by `10000^(−(dh−2)/dh)` radians per position, so even a
/// long context stays within one turn of it.
pub const ROTARY_BASE: f64 = 10_000.0;

struct Rotary<T> {
    n_heads: usize,
    /// `cos(p·θ_i)` and `sin(p·θ_i)`, `[seq, dh/2]`, for the positions of the input's rows.
    cos: Vec<T>,
    sin: Vec<T>,
}

impl<T: Float> Rotary<T> {
    /// Angles of positions `first_position..first_position + seq` for heads of width `head_dim`.
    fn new(n_heads: usize, head_dim: usize, seq: usize, first_position: usize) -> Self {
        let pairs = head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(seq * pairs), Vec::with_capacity(seq * pairs));
        for position in first_position..first_position + seq {
            for i in 0..pairs {
                let theta = ROTARY_BASE.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = position as f64 * theta;
                cos.push(T::from_f64(angle.cos()));
                sin.push(T::from_f64(angle.sin()));
            }
        }
        Rotary { n_heads, cos, sin }
    }

    /// Turns every pair of `x` (`[batch, seq, d]`) by its angle, forwards (`inverse` false) or back.
    fn rotate(&self, x: &Tensor<T>, inverse: bool) -> Tensor<T> {
        let (seq, d) = (x.dim(1), x.dim(2));
        let pairs = d / self.n_heads / 2;
        let mut y = vec![T::ZERO; x.numel()];
        for_each_row(&mut y, d, d, |row, y_row| {
            let angles = (row % seq) * pairs..(row % seq + 1) * pairs;
            let (cos, sin) = (&self.cos[angles.clone()], &self.sin[angles]);
            let x_row = &x.data()[row * d..(row + 1) * d];
            for (x_head, y_head) in x_row.chunks_exact(2 * pairs).zip(y_row.chunks_exact_mut(2 * pairs)) {
                for (i, (x_pair, y_pair)) in x_head.chunks_exact(2).zip(y_head.chunks_exact_mut(2)).enumerate() {
                    let sin = if inverse { -sin[i] } else { sin[i] };
                    y_pair[0] = x_pair[0] * cos[i] - x_pair[1] * sin;
                    y_pair[1] = x_pair[0] * sin + x_pair[1] * cos[i];
                }
            }
        });
        Tensor::from_vec(x.shape(), y)
    }
}

impl<T: Float> Op<T> for Rotary<T> {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("rotary takes x") };
        self.rotate(x, false)
    }

    // In the forward pass this was y = R(p·θᵢ)·x for each pair, a rotation, so now dx = R(p·θᵢ)ᵀ·g =
    // R(−p·θᵢ)·g: the gradient turned back.
    fn backward(&self, _: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        vec![Some(Grad::Dense(self.rotate(g, true)))]
    }
}

/// RoPE on `x` of shape `[batch, seq, d]` split into `n_heads` heads, the rows of each sequence sitting
/// at positions `first_position..first_position + seq` (nonzero when earlier positions are cached).
///
/// # Panics
/// Unless `x` is 3-D and `n_heads > 0` splits its last axis into heads of even width.
pub fn rotary<T: Float>(tape: &mut Tape<T>, x: &Var<T>, n_heads: usize, first_position: usize) -> Var<T> {
    let shape = x.shape();
    let ok = shape.len() == 3 && n_heads > 0 && shape[2] % (2 * n_heads) == 0;
    assert!(ok, "rotary: want [batch, seq, d] with d split into {n_heads} heads of even width; got {shape:?}");
    let op = Rotary::new(n_heads, shape[2] / n_heads, shape[1], first_position);
    tape.apply(op, &[x])
}
