//! A fully connected layer `y = x·W + b`, the building block of every other layer here.
//!
//! The weight is stored `[d_in, d_out]` so that the forward pass is a plain `matmul` of the activations
//! `[..., d_in]` by it, with no transpose.

use crate::kernels::Float;
use crate::nn::Module;
use crate::ops;
use crate::param::{Param, ParamKind};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

pub struct Linear<T: Float = f32> {
    /// `[d_in, d_out]`, named `{name}.weight`, weight-decayed.
    pub weight: Param<T>,
    /// `[d_out]`, named `{name}.bias`, zero-initialised, not decayed.
    pub bias: Option<Param<T>>,
}

impl<T: Float> Linear<T> {
    /// Weight entries drawn from N(0, init_std²); the bias (if any) starts at zero.
    pub fn new(name: &str, d_in: usize, d_out: usize, bias: bool, init_std: f64, rng: &mut Rng) -> Self {
        let weight =
            Param::new(format!("{name}.weight"), ParamKind::Weight, Tensor::randn(&[d_in, d_out], init_std, rng));
        let bias = bias.then(|| Param::new(format!("{name}.bias"), ParamKind::NoDecay, Tensor::zeros(&[d_out])));
        Linear { weight, bias }
    }

    pub fn d_in(&self) -> usize {
        self.weight.value.dim(0)
    }

    pub fn d_out(&self) -> usize {
        self.weight.value.dim(1)
    }

    /// `x [..., d_in] → [..., d_out]`.
    pub fn forward(&self, tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
        let weight = tape.param(&self.weight);
        match &self.bias {
            Some(bias) => {
                let bias = tape.param(bias);
                ops::linear(tape, x, &weight, &bias)
            }
            None => ops::matmul(tape, x, &weight),
        }
    }
}

impl<T: Float> Module<T> for Linear<T> {
    fn params(&self) -> Vec<&Param<T>> {
        std::iter::once(&self.weight).chain(&self.bias).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        std::iter::once(&mut self.weight).chain(&mut self.bias).collect()
    }
}
