//! Elementwise functions of one tensor: `neg, exp, log, sqrt, tanh, sigmoid, relu, gelu` and adding or
//! multiplying by a constant.
//!
//! Each function is one small type whose forward `f` and backward `df` stand next to each other (as in
//! micrograd), written once over [`Lanes`] (a float or its SIMD vector), so the same lines serve the
//! SIMD body and the scalar tail of `kernels::vector`'s loops. Where the derivative is cheaper in terms of
//! the output (`exp`: `f' = y`; `sigmoid`: `f' = y(1 − y)`; `tanh`: `f' = 1 − y²`), `df` reads the output
//! the tape kept instead of recomputing. `ln`, `erf` and comparisons have no SIMD form and go lane by lane.

use crate::grad::Grad;
use crate::kernels::gelu::{gelu as gelu_tanh, gelu_grad as gelu_tanh_grad, Fma};
use crate::kernels::vector::zip_map;
use crate::kernels::{Float, Lanes};
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

/// One elementwise function: `y = f(x)`, and `dx = g · f'(x)` given the input `x`, the output `y` and the
/// upstream gradient `g`.
trait Elementwise: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V;
    fn df<T: Float, V: Lanes<T>>(self, x: V, y: V, g: V) -> V;
}

#[derive(Clone, Copy)]
struct Neg;

impl Elementwise for Neg {
    const NAME: &'static str = "neg";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        -x
    }
    fn df<T: Float, V: Lanes<T>>(self, _: V, _: V, g: V) -> V {
        -g
    }
}

#[derive(Clone, Copy)]
struct Exp;

impl Elementwise for Exp {
    const NAME: &'static str = "exp";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x.exp()
    }
    // (eˣ)' = eˣ = y.
    fn df<T: Float, V: Lanes<T>>(self, _: V, y: V, g: V) -> V {
        y * g
    }
}

#[derive(Clone, Copy)]
struct Log;

impl Elementwise for Log {
    const NAME: &'static str = "log";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x.map_lanes(T::ln)
    }
    // (ln x)' = 1/x.
    fn df<T: Float, V: Lanes<T>>(self, x: V, _: V, g: V) -> V {
        g / x
    }
}

#[derive(Clone, Copy)]
struct Sqrt;

impl Elementwise for Sqrt {
    const NAME: &'static str = "sqrt";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x.sqrt()
    }
    // (√x)' = 1 / (2√x) = 0.5 / y.
    fn df<T: Float, V: Lanes<T>>(self, _: V, y: V, g: V) -> V {
        V::splat(T::from_f64(0.5)) * g / y
    }
}

#[derive(Clone, Copy)]
struct Tanh;

impl Elementwise for Tanh {
    const NAME: &'static str = "tanh";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x.tanh()
    }
    // tanh' = 1 − tanh² = 1 − y².
    fn df<T: Float, V: Lanes<T>>(self, _: V, y: V, g: V) -> V {
        g * (V::splat(T::ONE) - y * y)
    }
}

#[derive(Clone, Copy)]
struct Sigmoid;

impl Elementwise for Sigmoid {
    const NAME: &'static str = "sigmoid";
    // 1 / (1 + e^−x): for very negative x, e^−x = ∞ and the result is the correct 0.
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        V::splat(T::ONE) / (V::splat(T::ONE) + (-x).exp())
    }
    // σ' = σ(1 − σ) = y(1 − y).
    fn df<T: Float, V: Lanes<T>>(self, _: V, y: V, g: V) -> V {
        g * y * (V::splat(T::ONE) - y)
    }
}

#[derive(Clone, Copy)]
struct Relu;

impl Elementwise for Relu {
    const NAME: &'static str = "relu";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x.max(V::splat(T::ZERO))
    }
    // 1 where x > 0, else 0 (the subgradient 0 at x = 0).
    fn df<T: Float, V: Lanes<T>>(self, x: V, _: V, g: V) -> V {
        x.zip_lanes(g, |x, g| if x > T::ZERO { g } else { T::ZERO })
    }
}

/// The tanh approximation, shared with the PEER experts: see [`crate::kernels::gelu`].
#[derive(Clone, Copy)]
struct GeluTanh;

impl Elementwise for GeluTanh {
    const NAME: &'static str = "gelu_tanh";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        gelu_tanh(x, Fma::Fused)
    }
    fn df<T: Float, V: Lanes<T>>(self, x: V, _: V, g: V) -> V {
        gelu_tanh_grad(x, g, Fma::Fused)
    }
}

/// 1/√2, which turns `erf` into the standard normal CDF: Φ(x) = ½(1 + erf(x/√2)).
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the standard normal density's constant.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[derive(Clone, Copy)]
struct GeluErf;

impl Elementwise for GeluErf {
    const NAME: &'static str = "gelu_erf";
    // y = xΦ(x).
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        let (half, s) = (T::from_f64(0.5), T::from_f64(FRAC_1_SQRT_2));
        x.map_lanes(|x| half * x * (T::ONE + (x * s).erf()))
    }
    // y' = Φ(x) + xφ(x) with φ(x) = e^(−x²/2) / √(2π).
    fn df<T: Float, V: Lanes<T>>(self, x: V, _: V, g: V) -> V {
        let (half, s, d) = (T::from_f64(0.5), T::from_f64(FRAC_1_SQRT_2), T::from_f64(FRAC_1_SQRT_2PI));
        x.zip_lanes(g, |x, g| {
            let cdf = half * (T::ONE + (x * s).erf());
            let pdf = d * (-half * x * x).exp();
            g * (cdf + x * pdf)
        })
    }
}

#[derive(Clone, Copy)]
struct AddScalar(f64);

impl Elementwise for AddScalar {
    const NAME: &'static str = "add_scalar";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x + V::splat(T::from_f64(self.0))
    }
    fn df<T: Float, V: Lanes<T>>(self, _: V, _: V, g: V) -> V {
        g
    }
}

#[derive(Clone, Copy)]
struct MulScalar(f64);

impl Elementwise for MulScalar {
    const NAME: &'static str = "mul_scalar";
    fn f<T: Float, V: Lanes<T>>(self, x: V) -> V {
        x * V::splat(T::from_f64(self.0))
    }
    fn df<T: Float, V: Lanes<T>>(self, _: V, _: V, g: V) -> V {
        g * V::splat(T::from_f64(self.0))
    }
}

/// The tape op of one elementwise function: `kernels::vector`'s SIMD loops over its `f` and `df`.
struct Unary<F>(F);

impl<T: Float, F: Elementwise> Op<T> for Unary<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let (&[x], f) = (inputs, self.0) else { unreachable!("a unary op has one input") };
        let mut y = vec![T::ZERO; x.numel()];
        zip_map([x.data()], &mut y, |[x]| f.f(x), |[x]| f.f(x));
        Tensor::from_vec(x.shape(), y)
    }

    // In the forward pass this was y = f(x); now dx = g·f'(x), from x, the y the tape kept and g.
    fn backward(&self, inputs: &[&Tensor<T>], y: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let (&[x], f) = (inputs, self.0) else { unreachable!("a unary op has one input") };
        let mut dx = vec![T::ZERO; x.numel()];
        zip_map([x.data(), y.data(), g.data()], &mut dx, |[x, y, g]| f.df(x, y, g), |[x, y, g]| f.df(x, y, g));
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

fn unary<T: Float>(tape: &mut Tape<T>, x: &Var<T>, f: impl Elementwise) -> Var<T> {
    tape.apply(Unary(f), &[x])
}

/// `−x`.
pub fn neg<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Neg)
}

/// `eˣ` elementwise.
pub fn exp<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Exp)
}

/// Natural logarithm elementwise (NaN or −∞ where `x ≤ 0`, as for `f64::ln`).
pub fn log<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Log)
}

/// Square root elementwise; its gradient is infinite at 0.
pub fn sqrt<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Sqrt)
}

/// Hyperbolic tangent elementwise.
pub fn tanh<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Tanh)
}

/// The logistic function `1 / (1 + e^−x)` elementwise.
pub fn sigmoid<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Sigmoid)
}

/// `max(x, 0)` elementwise; the gradient at exactly 0 is taken as 0.
pub fn relu<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    unary(tape, x, Relu)
}

/// The GELU activation `x Φ(x)`, exactly ([`Gelu::Erf`]) or by its tanh approximation ([`Gelu::Tanh`]).
pub fn gelu<T: Float>(tape: &mut Tape<T>, x: &Var<T>, formula: Gelu) -> Var<T> {
    match formula {
        Gelu::Tanh => unary(tape, x, GeluTanh),
        Gelu::Erf => unary(tape, x, GeluErf),
    }
}

/// `x + c` for a constant `c`.
pub fn add_scalar<T: Float>(tape: &mut Tape<T>, x: &Var<T>, c: f64) -> Var<T> {
    unary(tape, x, AddScalar(c))
}

/// `x · c` for a constant `c`.
pub fn mul_scalar<T: Float>(tape: &mut Tape<T>, x: &Var<T>, c: f64) -> Var<T> {
    unary(tape, x, MulScalar(c))
}
