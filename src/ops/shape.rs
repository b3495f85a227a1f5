//! Ops that move elements without arithmetic: reshape, transpose of two axes, concat, split and narrow.
//!
//! Each backward moves the gradient back the way the forward moved the values: reshape reshapes back,
//! transpose transposes back, narrow writes its gradient into a zero tensor at the same place, and
//! concat narrows its gradient into one piece per input. Tensors are contiguous row-major, so every op
//! except reshape copies (the attention and matmul ops read transposes by strides instead).

use crate::grad::Grad;
use crate::kernels::Float;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// A shape seen around `axis` as `[outer, axis, inner]`: the products of the axes before and after it.
fn around<T: Float>(x: &Tensor<T>, axis: usize, op: &str) -> (usize, usize, usize) {
    assert!(axis < x.rank(), "{op}: axis {axis} out of range for shape {:?}", x.shape());
    let outer = x.shape()[..axis].iter().product();
    let inner = x.shape()[axis + 1..].iter().product();
    (outer, x.dim(axis), inner)
}

struct Reshape {
    shape: Vec<usize>,
}

impl<T: Float> Op<T> for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("reshape takes x") };
        x.reshape(&self.shape)
    }

    // In the forward pass this was y = x under a new shape, so now dx = g under x's shape (no copy).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("reshape takes x") };
        vec![Some(Grad::Dense(g.reshape(x.shape())))]
    }
}

/// The same elements under a new shape with the same element count; shares the buffer (no copy).
///
/// # Panics
/// If `shape` holds a different number of elements than `x`.
pub fn reshape<T: Float>(tape: &mut Tape<T>, x: &Var<T>, shape: &[usize]) -> Var<T> {
    tape.apply(Reshape { shape: shape.to_vec() }, &[x])
}

struct Transpose {
    axis1: usize,
    axis2: usize,
}

/// Swaps axes `axis1 < axis2` of `x`, viewing its shape as `[pre, d1, mid, d2, post]`.
fn swap_axes<T: Float>(x: &Tensor<T>, axis1: usize, axis2: usize) -> Tensor<T> {
    let (lo, hi) = (axis1.min(axis2), axis1.max(axis2));
    assert!(hi < x.rank(), "transpose: axes {axis1}, {axis2} out of range for shape {:?}", x.shape());
    if lo == hi {
        return x.clone(); // an axis swapped with itself
    }
    let s = x.shape();
    let pre: usize = s[..lo].iter().product();
    let mid: usize = s[lo + 1..hi].iter().product();
    let post: usize = s[hi + 1..].iter().product();
    let (d1, d2) = (s[lo], s[hi]);
    let src = x.data();
    let mut out = Vec::with_capacity(x.numel());
    for p in 0..pre {
        for j in 0..d2 {
            for q in 0..mid {
                for i in 0..d1 {
                    let start = (((p * d1 + i) * mid + q) * d2 + j) * post;
                    out.extend_from_slice(&src[start..start + post]);
                }
            }
        }
    }
    let mut shape = s.to_vec();
    shape.swap(lo, hi);
    Tensor::from_vec(&shape, out)
}

impl<T: Float> Op<T> for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("transpose takes x") };
        swap_axes(x, self.axis1, self.axis2)
    }

    // In the forward pass this was y = x with axes axis1 and axis2 swapped, so now dx = g with them
    // swapped back.
    fn backward(&self, _x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, _needs: &[bool]) -> Vec<Option<Grad<T>>> {
        vec![Some(Grad::Dense(swap_axes(g, self.axis1, self.axis2)))]
    }
}

/// `x` with axes `axis1` and `axis2` swapped, materialised as a new contiguous tensor.
///
/// # Panics
/// If either axis is out of range for `x`.
pub fn transpose<T: Float>(tape: &mut Tape<T>, x: &Var<T>, axis1: usize, axis2: usize) -> Var<T> {
    tape.apply(Transpose { axis1, axis2 }, &[x])
}

struct Narrow {
    axis: usize,
    start: usize,
    len: usize,
}

impl<T: Float> Op<T> for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("narrow takes x") };
        let (outer, size, inner) = around(x, self.axis, "narrow");
        assert!(
            self.start + self.len <= size,
            "narrow: {}..{} out of range for axis {} of {:?}",
            self.start,
            self.start + self.len,
            self.axis,
            x.shape()
        );
        let mut out = Vec::with_capacity(outer * self.len * inner);
        for block in x.data().chunks((size * inner).max(1)) {
            out.extend_from_slice(&block[self.start * inner..(self.start + self.len) * inner]);
        }
        let mut shape = x.shape().to_vec();
        shape[self.axis] = self.len;
        Tensor::from_vec(&shape, out)
    }

    // In the forward pass this was y = x[start..start + len] along `axis`, so now dx = g in that slice
    // and 0 elsewhere.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("narrow takes x") };
        let (_, size, inner) = around(x, self.axis, "narrow");
        let mut dx = vec![T::ZERO; x.numel()];
        let piece = self.len * inner;
        for (block, g_block) in dx.chunks_mut((size * inner).max(1)).zip(g.data().chunks(piece.max(1))) {
            block[self.start * inner..self.start * inner + piece].copy_from_slice(g_block);
        }
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Elements `start..start + len` of axis `axis` of `x` (copied).
///
/// # Panics
/// If `axis` is out of range for `x` or `start + len` exceeds its length.
pub fn narrow<T: Float>(tape: &mut Tape<T>, x: &Var<T>, axis: usize, start: usize, len: usize) -> Var<T> {
    tape.apply(Narrow { axis, start, len }, &[x])
}

/// Consecutive pieces of `x` along `axis` with the given sizes, which must add up to the axis length.
///
/// # Panics
/// If `axis` is out of range for `x` or the sizes do not add up to its length.
pub fn split<T: Float>(tape: &mut Tape<T>, x: &Var<T>, axis: usize, sizes: &[usize]) -> Vec<Var<T>> {
    let total: usize = sizes.iter().sum();
    assert_eq!(total, x.shape()[axis], "split: sizes {sizes:?} do not add up to axis {axis} of {:?}", x.shape());
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let piece = narrow(tape, x, axis, start, len);
            start += len;
            piece
        })
        .collect()
}

struct Concat {
    axis: usize,
}

impl<T: Float> Op<T> for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let &[first_input, ..] = x else { panic!("concat: no inputs") };
        let first = first_input.shape();
        for t in x {
            let same_rest = t.rank() == first.len() && (0..first.len()).all(|i| i == self.axis || t.dim(i) == first[i]);
            assert!(same_rest, "concat: shape {:?} does not match {first:?} outside axis {}", t.shape(), self.axis);
        }
        let (outer, _, inner) = around(first_input, self.axis, "concat");
        let total: usize = x.iter().map(|t| t.dim(self.axis)).sum();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for t in x {
                let piece = t.dim(self.axis) * inner;
                out.extend_from_slice(&t.data()[o * piece..(o + 1) * piece]);
            }
        }
        let mut shape = first.to_vec();
        shape[self.axis] = total;
        Tensor::from_vec(&shape, out)
    }

    // In the forward pass this was y = [x₀, x₁, …] joined along `axis`, so now dxᵢ = the slice of g
    // along `axis` where xᵢ sits.
    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let mut start = 0;
        x.iter()
            .zip(needs)
            .map(|(t, &need)| {
                let len = t.dim(self.axis);
                let grad = need.then(|| Grad::Dense(Narrow { axis: self.axis, start, len }.forward(&[g])));
                start += len;
                grad
            })
            .collect()
    }
}

/// The inputs joined along `axis`; all other axes must agree.
///
/// # Panics
/// If `xs` is empty, `axis` is out of range, or the inputs differ in rank or in an axis other than `axis`.
pub fn concat<T: Float>(tape: &mut Tape<T>, xs: &[&Var<T>], axis: usize) -> Var<T> {
    tape.apply(Concat { axis }, xs)
}
