//! Elementwise functions of one tensor: `neg, exp, log, sqrt, tanh, sigmoid, relu, gelu` and adding or
//! multiplying by a constant.
//!
//! Each function is one [`Kind`] with its forward `y = f(x)` and its derivative `dx = g · f'(x)` written
//! next to each other. Where the derivative is cheaper in terms of the output (`exp`: `f' = y`; `sigmoid`:
//! `f' = y(1 − y)`; `tanh`: `f' = 1 − y²`) backward reads the output the tape kept, instead of recomputing.
//! The loops are `kernels::vector`'s SIMD maps; `ln` and `erf` have no SIMD form, so those run scalar.

use crate::grad::Grad;
use crate::kernels::vector::{zip_map, zip_map_scalar};
use crate::kernels::{Float, SimdVec};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Which formula [`gelu`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`: the approximation used by GPT-2.
    Tanh,
    /// `0.5 x (1 + erf(x / √2))` = `x Φ(x)`: the exact definition (Hendrycks and Gimpel 2016).
    Erf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Relu,
    Gelu(Gelu),
    AddScalar(f64),
    MulScalar(f64),
}

/// √(2/π), the slope of the tanh-GELU's inner polynomial.
const GELU_C: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh-GELU.
const GELU_CUBIC: f64 = 0.044715;
/// 1/√2, which turns `erf` into the standard normal CDF: Φ(x) = ½(1 + erf(x/√2)).
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the standard normal density's constant.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

struct Unary {
    kind: Kind,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Neg => "neg",
            Kind::Exp => "exp",
            Kind::Log => "log",
            Kind::Sqrt => "sqrt",
            Kind::Tanh => "tanh",
            Kind::Sigmoid => "sigmoid",
            Kind::Relu => "relu",
            Kind::Gelu(Gelu::Tanh) => "gelu_tanh",
            Kind::Gelu(Gelu::Erf) => "gelu_erf",
            Kind::AddScalar(_) => "add_scalar",
            Kind::MulScalar(_) => "mul_scalar",
        }
    }

    /// `y = f(x)` elementwise.
    fn forward<T: Float>(self, x: &[T], y: &mut [T]) {
        let one = T::ONE;
        let half = T::from_f64(0.5);
        match self {
            Kind::Neg => zip_map([x], y, |[v]| -v, |[v]| -v),
            Kind::Exp => zip_map([x], y, |[v]| v.exp(), |[v]| v.exp()),
            Kind::Log => zip_map_scalar([x], y, |[v]| v.ln()),
            Kind::Sqrt => zip_map([x], y, |[v]| v.sqrt(), |[v]| v.sqrt()),
            Kind::Tanh => zip_map([x], y, |[v]| v.tanh(), |[v]| v.tanh()),
            // 1 / (1 + e^−x): for very negative x, e^−x = ∞ and the result is the correct 0.
            Kind::Sigmoid => {
                let ones = T::Simd::splat(one);
                zip_map([x], y, |[v]| ones / (ones + (-v).exp()), |[v]| one / (one + (-v).exp()))
            }
            Kind::Relu => {
                let zeros = T::Simd::splat(T::ZERO);
                zip_map([x], y, |[v]| v.max(zeros), |[v]| v.max(T::ZERO))
            }
            Kind::Gelu(Gelu::Tanh) => {
                let (c, k) = (T::from_f64(GELU_C), T::from_f64(GELU_CUBIC));
                let (cv, kv, hv, ones) =
                    (T::Simd::splat(c), T::Simd::splat(k), T::Simd::splat(half), T::Simd::splat(one));
                zip_map(
                    [x],
                    y,
                    |[v]| hv * v * (ones + (cv * (kv * v * v).mul_add(v, v)).tanh()),
                    |[v]| half * v * (one + (c * (v + k * v * v * v)).tanh()),
                )
            }
            Kind::Gelu(Gelu::Erf) => {
                let s = T::from_f64(FRAC_1_SQRT_2);
                zip_map_scalar([x], y, |[v]| half * v * (one + (v * s).erf()))
            }
            Kind::AddScalar(c) => {
                let c = T::from_f64(c);
                let cv = T::Simd::splat(c);
                zip_map([x], y, |[v]| v + cv, |[v]| v + c)
            }
            Kind::MulScalar(c) => {
                let c = T::from_f64(c);
                let cv = T::Simd::splat(c);
                zip_map([x], y, |[v]| v * cv, |[v]| v * c)
            }
        }
    }

    /// `dx = g · f'(x)` elementwise, from the input `x`, the output `y` and the upstream gradient `g`.
    fn backward<T: Float>(self, x: &[T], y: &[T], g: &[T], dx: &mut [T]) {
        let one = T::ONE;
        let half = T::from_f64(0.5);
        let ones = T::Simd::splat(one);
        match self {
            Kind::Neg => zip_map([g], dx, |[g]| -g, |[g]| -g),
            // (e^x)' = e^x = y.
            Kind::Exp => zip_map([y, g], dx, |[y, g]| y * g, |[y, g]| y * g),
            // (ln x)' = 1/x.
            Kind::Log => zip_map([x, g], dx, |[x, g]| g / x, |[x, g]| g / x),
            // (√x)' = 1 / (2√x) = 0.5 / y.
            Kind::Sqrt => {
                let hv = T::Simd::splat(half);
                zip_map([y, g], dx, |[y, g]| hv * g / y, |[y, g]| half * g / y)
            }
            // tanh' = 1 − tanh² = 1 − y².
            Kind::Tanh => zip_map([y, g], dx, |[y, g]| g * (ones - y * y), |[y, g]| g * (one - y * y)),
            // σ' = σ(1 − σ) = y(1 − y).
            Kind::Sigmoid => zip_map([y, g], dx, |[y, g]| g * y * (ones - y), |[y, g]| g * y * (one - y)),
            // 1 where x > 0, else 0 (the subgradient 0 at x = 0).
            Kind::Relu => zip_map_scalar([x, g], dx, |[x, g]| if x > T::ZERO { g } else { T::ZERO }),
            // With u = c(x + k x³) and t = tanh u: y = ½x(1 + t), y' = ½(1 + t) + ½x(1 − t²)·c(1 + 3k x²).
            Kind::Gelu(Gelu::Tanh) => {
                let (c, k) = (T::from_f64(GELU_C), T::from_f64(GELU_CUBIC));
                zip_map_scalar([x, g], dx, |[x, g]| {
                    let t = (c * (x + k * x * x * x)).tanh();
                    let du = c * (one + T::from_f64(3.0) * k * x * x);
                    g * (half * (one + t) + half * x * (one - t * t) * du)
                })
            }
            // y = xΦ(x), y' = Φ(x) + xφ(x) with φ(x) = e^(−x²/2) / √(2π).
            Kind::Gelu(Gelu::Erf) => {
                let (s, d) = (T::from_f64(FRAC_1_SQRT_2), T::from_f64(FRAC_1_SQRT_2PI));
                zip_map_scalar([x, g], dx, |[x, g]| {
                    let cdf = half * (one + (x * s).erf());
                    let pdf = d * (-half * x * x).exp();
                    g * (cdf + x * pdf)
                })
            }
            Kind::AddScalar(_) => dx.copy_from_slice(g),
            Kind::MulScalar(c) => {
                let c = T::from_f64(c);
                let cv = T::Simd::splat(c);
                zip_map([g], dx, |[g]| g * cv, |[g]| g * c)
            }
        }
    }
}

impl<T: Float> Op<T> for Unary {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let mut y = vec![T::ZERO; x[0].numel()];
        self.kind.forward(x[0].data(), &mut y);
        Tensor::from_vec(x[0].shape(), y)
    }

    fn backward(&self, x: &[&Tensor<T>], y: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let mut dx = vec![T::ZERO; x[0].numel()];
        self.kind.backward(x[0].data(), y.data(), g.data(), &mut dx);
        vec![Some(Grad::Dense(Tensor::from_vec(x[0].shape(), dx)))]
    }
}

fn unary<T: Float>(tape: &mut Tape<T>, x: &Var<T>, kind: Kind) -> Var<T> {
    tape.apply(Unary { kind }, &[x])
}

/// `−x`.
pub fn neg<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Neg)
}

/// `eˣ` elementwise.
pub fn exp<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Exp)
}

/// Natural logarithm elementwise (NaN or −∞ where `x ≤ 0`, as for `f64::ln`).
pub fn log<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Log)
}

/// Square root elementwise; its gradient is infinite at 0.
pub fn sqrt<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Sqrt)
}

/// Hyperbolic tangent elementwise.
pub fn tanh<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Tanh)
}

/// The logistic function `1 / (1 + e^−x)` elementwise.
pub fn sigmoid<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Sigmoid)
}

/// `max(x, 0)` elementwise; the gradient at exactly 0 is taken as 0.
pub fn relu<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Kind::Relu)
}

/// The GELU activation `x Φ(x)`, exactly ([`Gelu::Erf`]) or by its tanh approximation ([`Gelu::Tanh`]).
pub fn gelu<T: Float>(tape: &mut Tape<T>, x: &Var<T>, formula: Gelu) -> Var<T> {
    unary(tape, x, Kind::Gelu(formula))
}

/// `x + c` for a constant `c`.
pub fn add_scalar<T: Float>(tape: &mut Tape<T>, x: &Var<T>, c: f64) -> Var<T> {
    unary(tape, x, Kind::AddScalar(c))
}

/// `x · c` for a constant `c`.
pub fn mul_scalar<T: Float>(tape: &mut Tape<T>, x: &Var<T>, c: f64) -> Var<T> {
    unary(tape, x, Kind::MulScalar(c))
}
