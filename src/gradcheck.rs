//! Gradient checks for ops, the engine's own and yours: the tape's gradients against central finite
//! differences, in double precision.
//!
//! The engine is generic over the float type, so a check runs the real forward and backward code in f64.
//! Central differences there are accurate to ~1e-9 relative, so the default tolerance of 1e-6 catches any
//! wrong backward formula (a missing factor, a wrong sign, a dropped term, a gradient sent to the wrong
//! input) yet never fires on rounding.
//!
//! What a check cannot catch: an error only at points it does not visit (a kink such as relu's at 0, a
//! branch the random inputs never take: choose inputs away from kinks and cover every branch); a backward
//! that is right in f64 but loses precision in f32; a forward that is itself wrong (a check only says the
//! backward is the derivative of the forward); and, above [`Check::max_coords`] elements per input, a wrong
//! coordinate it did not sample.
//!
//! ```
//! use peerlm::gradcheck::{check_gradients, tensor};
//! use peerlm::ops;
//!
//! let x = tensor(&[3, 4], -2.0, 2.0, 7);
//! check_gradients(&[x], |tape, v| ops::tanh(tape, &v[0])).unwrap();
//! ```
//!
//! With the `gradcheck` feature, [`shape`] gives proptest strategies for random shapes.

use crate::{Error, Grad, Op, Param, ParamKind, Rng, Tape, Tensor, Var};

/// `loss = Σ out ⊙ weights`: a scalar whose gradient with respect to `out` is `weights`, so every output
/// element reaches the check with its own random, non-trivial upstream gradient.
struct WeightedSum {
    weights: Tensor<f64>,
}

impl Op<f64> for WeightedSum {
    fn name(&self) -> &'static str {
        "weighted_sum"
    }
    fn forward(&mut self, x: &[&Tensor<f64>]) -> Tensor<f64> {
        Tensor::scalar(x[0].data().iter().zip(self.weights.data()).map(|(a, w)| a * w).sum())
    }
    // In the forward pass this was Σ out·w; so now d/dout = w, times the upstream scalar.
    fn backward(&self, _: &[&Tensor<f64>], _: &Tensor<f64>, g: &Tensor<f64>, _: &[bool]) -> Vec<Option<Grad<f64>>> {
        let scale = g.item();
        let data = self.weights.data().iter().map(|w| w * scale).collect();
        vec![Some(Grad::Dense(Tensor::from_vec(self.weights.shape(), data)))]
    }
}

/// Settings of one check.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Step of the central difference, relative to max(1, |x|).
    pub eps: f64,
    /// Allowed |analytic - numeric| / (1 + max(|analytic|, |numeric|)).
    pub tol: f64,
    /// At most this many coordinates per input are perturbed (chosen at random when there are more).
    pub max_coords: usize,
}

impl Default for Check {
    fn default() -> Self {
        Check { eps: 1e-6, tol: 1e-6, max_coords: 48 }
    }
}

/// Compares the tape's gradients of `f(inputs)` with central differences, for every input, with the
/// default [`Check`].
pub fn check_gradients<F>(inputs: &[Tensor<f64>], f: F) -> Result<(), Error>
where
    F: Fn(&mut Tape<f64>, &[Var<f64>]) -> Var<f64>,
{
    check_gradients_with(Check::default(), inputs, f)
}

/// [`check_gradients`] with chosen settings.
pub fn check_gradients_with<F>(check: Check, inputs: &[Tensor<f64>], f: F) -> Result<(), Error>
where
    F: Fn(&mut Tape<f64>, &[Var<f64>]) -> Var<f64>,
{
    let params: Vec<Param<f64>> = inputs.iter().map(|t| Param::new("input", ParamKind::Weight, t.clone())).collect();
    let out_shape = eval(&params, &f).shape().to_vec();
    let weights = Tensor::<f64>::randn(&out_shape, 1.0, &mut Rng::new(0x5eed));
    let loss_of = |params: &[Param<f64>]| -> f64 {
        let mut tape = Tape::no_grad();
        let vars: Vec<Var<f64>> = params.iter().map(|p| tape.param(p)).collect();
        let out = f(&mut tape, &vars);
        out.value().data().iter().zip(weights.data()).map(|(a, w)| a * w).sum()
    };

    let mut tape = Tape::new();
    let vars: Vec<Var<f64>> = params.iter().map(|p| tape.param(p)).collect();
    let out = f(&mut tape, &vars);
    if !out.tracked() {
        return Err(Error::Gradcheck("the output does not depend on the inputs".to_string()));
    }
    let loss = tape.apply(WeightedSum { weights: weights.clone() }, &[&out]);
    drop((vars, out));
    tape.backward(&loss);

    let mut rng = Rng::new(0xc0de);
    let mut perturbed: Vec<Param<f64>> =
        params.iter().map(|p| Param::new("input", ParamKind::Weight, p.value.clone())).collect();
    for (i, param) in params.iter().enumerate() {
        let analytic = tape.grad(param).map(Grad::to_dense).unwrap_or_else(|| Tensor::zeros(param.value.shape()));
        let n = param.value.numel();
        let coords: Vec<usize> = if n <= check.max_coords {
            (0..n).collect()
        } else {
            (0..check.max_coords).map(|_| rng.below(n as u64) as usize).collect()
        };
        for c in coords {
            let x = param.value.data()[c];
            let h = check.eps * x.abs().max(1.0);
            perturbed[i].value.data_mut()[c] = x + h;
            let up = loss_of(&perturbed);
            perturbed[i].value.data_mut()[c] = x - h;
            let down = loss_of(&perturbed);
            perturbed[i].value.data_mut()[c] = x;
            let numeric = (up - down) / (2.0 * h);
            let a = analytic.data()[c];
            let err = (a - numeric).abs() / (1.0 + a.abs().max(numeric.abs()));
            if err.is_nan() || err > check.tol {
                return Err(Error::Gradcheck(format!(
                    "input {i} {:?}, element {c}: analytic {a:.10e}, numeric {numeric:.10e} (error {err:.2e})",
                    param.value.shape()
                )));
            }
        }
    }
    Ok(())
}

fn eval<F>(params: &[Param<f64>], f: &F) -> Tensor<f64>
where
    F: Fn(&mut Tape<f64>, &[Var<f64>]) -> Var<f64>,
{
    let mut tape = Tape::no_grad();
    let vars: Vec<Var<f64>> = params.iter().map(|p| tape.param(p)).collect();
    f(&mut tape, &vars).value().clone()
}

/// A tensor of the given shape with entries uniform in [lo, hi), drawn from `seed`.
pub fn tensor(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor<f64> {
    Tensor::uniform(shape, lo, hi, &mut Rng::new(seed))
}

/// A random shape of `rank` axes, each 1..=max (a proptest strategy).
#[cfg(feature = "gradcheck")]
pub fn shape(rank: usize, max: usize) -> impl proptest::strategy::Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1..=max, rank)
}
