//! Elementwise add, sub, mul and div, with broadcasting of a trailing-shape operand.
//!
//! `b` has either `a`'s shape or a suffix of it (a bias `[d]` against activations `[tokens, d]`, a per-row
//! scale `[t, d]` against `[batch, t, d]`): `b` then repeats over `a`'s leading axes. In backward the
//! gradient of a repeated operand is the sum over its repeats.

use crate::grad::Grad;
use crate::kernels::Float;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
}

/// The partial derivative of one output element, from (a, b, upstream gradient).
type ElementGrad<T> = fn(T, T, T) -> T;

struct Binary {
    kind: Kind,
}

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
    fn apply<T: Float>(self, x: T, y: T) -> T {
        match self {
            Kind::Add => x + y,
            Kind::Sub => x - y,
            Kind::Mul => x * y,
            Kind::Div => x / y,
        }
    }
}

impl<T: Float> Op<T> for Binary {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (a, b) = (x[0], x[1]);
        check_broadcast(self.kind.name(), a.shape(), b.shape());
        let mut out = Vec::with_capacity(a.numel());
        for a_row in a.data().chunks(b.numel().max(1)) {
            out.extend(a_row.iter().zip(b.data()).map(|(&p, &q)| self.kind.apply(p, q)));
        }
        Tensor::from_vec(a.shape(), out)
    }

    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (a, b) = (x[0], x[1]);
        let width = b.numel().max(1);
        // d/da and d/db of one element, given a, b and the upstream gradient.
        let (da, db): (ElementGrad<T>, ElementGrad<T>) = match self.kind {
            Kind::Add => (|_, _, g| g, |_, _, g| g),
            Kind::Sub => (|_, _, g| g, |_, _, g| -g),
            Kind::Mul => (|_, q, g| g * q, |p, _, g| g * p),
            Kind::Div => (|_, q, g| g / q, |p, q, g| -g * p / (q * q)),
        };
        let grad_a = needs[0].then(|| {
            let mut ga = Vec::with_capacity(a.numel());
            for (a_row, g_row) in a.data().chunks(width).zip(g.data().chunks(width)) {
                ga.extend(a_row.iter().zip(b.data()).zip(g_row).map(|((&p, &q), &g)| da(p, q, g)));
            }
            Grad::Dense(Tensor::from_vec(a.shape(), ga))
        });
        let grad_b = needs[1].then(|| {
            let mut gb = vec![T::ZERO; b.numel()];
            for (a_row, g_row) in a.data().chunks(width).zip(g.data().chunks(width)) {
                for (((acc, &p), &q), &g) in gb.iter_mut().zip(a_row).zip(b.data()).zip(g_row) {
                    *acc += db(p, q, g);
                }
            }
            Grad::Dense(Tensor::from_vec(b.shape(), gb))
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
pub fn add<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Add }, &[a, b])
}

/// `a - b`, broadcasting `b` as in [`add`].
pub fn sub<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Sub }, &[a, b])
}

/// `a * b` elementwise, broadcasting `b` as in [`add`].
pub fn mul<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Mul }, &[a, b])
}

/// `a / b` elementwise, broadcasting `b` as in [`add`].
pub fn div<T: Float>(tape: &mut Tape<T>, a: &Var<T>, b: &Var<T>) -> Var<T> {
    tape.apply(Binary { kind: Kind::Div }, &[a, b])
}
