//! Elementwise add, sub, mul and div, with broadcasting of a trailing-shape operand.
//!
//! `b` has either `a`'s shape or a suffix of it (a bias `[d]` against activations `[tokens, d]`, a per-row
//! scale `[t, d]` against `[batch, t, d]`): `b` then repeats over `a`'s leading axes. In backward the
//! gradient of a repeated operand is the sum over its repeats, added in row order (so the result does not
//! depend on the thread count). The loops are `kernels::vector`'s SIMD maps, one per row of `a`.

use crate::grad::Grad;
use crate::kernels::vector::{for_each_row, update, zip_map};
use crate::kernels::{Arith, Float};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
}

struct Binary {
    kind: Kind,
}

// Each formula is written once over `V: Arith`, which both a float and its SIMD vector are: the same
// function serves the SIMD body and the scalar tail of `kernels::vector`'s loops.
impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Add => "add",
            Kind::Sub => "sub",
            Kind::Mul => "mul",
            Kind::Div => "div",
        }
    }

    #[inline(always)]
    fn apply<V: Arith>(self, x: V, y: V) -> V {
        match self {
            Kind::Add => x + y,
            Kind::Sub => x - y,
            Kind::Mul => x * y,
            Kind::Div => x / y,
        }
    }

    /// `g · ∂(x∘y)/∂x`, for one element `x` of `a` and `y` of `b`, given the upstream gradient `g`.
    #[inline(always)]
    fn grad_a<V: Arith>(self, _x: V, y: V, g: V) -> V {
        match self {
            Kind::Add | Kind::Sub => g,
            Kind::Mul => g * y,
            Kind::Div => g / y,
        }
    }

    /// `g · ∂(x∘y)/∂y`.
    #[inline(always)]
    fn grad_b<V: Arith>(self, x: V, y: V, g: V) -> V {
        match self {
            Kind::Add => g,
            Kind::Sub => -g,
            Kind::Mul => g * x,
            Kind::Div => -g * x / (y * y),
        }
    }
}

impl<T: Float> Op<T> for Binary {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[a_in, b_in] = inputs else { unreachable!("a binary op takes a, b") };
        let (a, b) = (a_in.data(), b_in.data());
        check_broadcast(self.kind.name(), a_in.shape(), b_in.shape());
        let (kind, width) = (self.kind, b.len().max(1));
        let mut out = vec![T::ZERO; a.len()];
        // One row of `a` per repeat of `b` (a single row when the shapes are equal).
        for_each_row(&mut out, width, width, |row, y| {
            let a_row = &a[row * width..][..width];
            zip_map([a_row, b], y, |[p, q]| kind.apply(p, q), |[p, q]| kind.apply(p, q));
        });
        Tensor::from_vec(a_in.shape(), out)
    }

    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, grad: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[a_in, b_in] = inputs else { unreachable!("a binary op takes a, b") };
        let (a, b, g) = (a_in.data(), b_in.data(), grad.data());
        let (kind, width) = (self.kind, b.len().max(1));
        // In the forward pass this was out = a ± b, so now da = g: the gradient's own buffer, shared, not
        // copied (a later in-place accumulation copies it only if it is still shared then). Likewise
        // db = g for an add of equal shapes (a residual connection).
        let (shares_a, shares_b) = match kind {
            Kind::Add => (a_in.shape() == grad.shape(), b_in.shape() == grad.shape()),
            Kind::Sub => (true, false),
            Kind::Mul | Kind::Div => (false, false),
        };
        let grad_a = needs[0].then(|| {
            if shares_a {
                return Grad::Dense(grad.clone());
            }
            let mut ga = vec![T::ZERO; a.len()];
            for_each_row(&mut ga, width, width, |row, d| {
                let (a_row, g_row) = (&a[row * width..][..width], &g[row * width..][..width]);
                zip_map([a_row, b, g_row], d, |[p, q, g]| kind.grad_a(p, q, g), |[p, q, g]| kind.grad_a(p, q, g));
            });
            Grad::Dense(Tensor::from_vec(a_in.shape(), ga))
        });
        let grad_b = needs[1].then(|| {
            if shares_b {
                return Grad::Dense(grad.clone());
            }
            // Rows are added in order, so the sum over repeats does not depend on the thread count.
            let mut gb = vec![T::ZERO; b.len()];
            for (a_row, g_row) in a.chunks(width).zip(g.chunks(width)) {
                update(
                    &mut gb,
                    [a_row, b, g_row],
                    |acc, [p, q, g]| acc + kind.grad_b(p, q, g),
                    |acc, [p, q, g]| acc + kind.grad_b(p, q, g),
                );
            }
            Grad::Dense(Tensor::from_vec(b_in.shape(), gb))
        });
        vec![grad_a, grad_b]
    }
}

fn check_broadcast(op: &str, a: &[usize], b: &[usize]) {
    assert!(
        b.len() <= a.len() && a[a.len() - b.len()..] == *b,
        "{op}: shape {b:?} is not a trailing part of {a:?}, so it cannot broadcast"
    );
}

/// `a + b`, with `b` broadcast over `a`'s leading axes if its shape is a suffix of `a`'s.
///
/// # Panics
/// If `b`'s shape is neither `a`'s nor a suffix of it.
pub fn add<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Add }, &[a, b])
}

/// `a - b`, broadcasting `b` as in [`add`].
///
/// # Panics
/// If `b`'s shape is neither `a`'s nor a suffix of it.
pub fn sub<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Sub }, &[a, b])
}

/// `a * b` elementwise, broadcasting `b` as in [`add`].
///
/// # Panics
/// If `b`'s shape is neither `a`'s nor a suffix of it.
pub fn mul<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Mul }, &[a, b])
}

/// `a / b` elementwise, broadcasting `b` as in [`add`].
///
/// # Panics
/// If `b`'s shape is neither `a`'s nor a suffix of it.
pub fn div<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Div }, &[a, b])
}
