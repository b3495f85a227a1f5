//! Layer normalisation as a module: a gain and a bias around [`crate::ops::layer_norm`].
//!
//! GPT-2 normalises the input of each sub-block (pre-norm) and the final hidden state; the gain starts at
//! one and the bias at zero, so a fresh block passes normalised activations through unchanged.

use crate::kernels::Float;
use crate::nn::Module;
use crate::ops;
use crate::param::{Param, ParamKind};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

pub struct LayerNorm<T: Float = f32> {
    pub gain: Param<T>,
    pub bias: Param<T>,
    eps: f64,
}

impl<T: Float> LayerNorm<T> {
    pub fn new(name: &str, dim: usize, eps: f64) -> Self {
        LayerNorm {
            gain: Param::new(format!("{name}.gain"), ParamKind::NoDecay, Tensor::full(&[dim], T::ONE)),
            bias: Param::new(format!("{name}.bias"), ParamKind::NoDecay, Tensor::zeros(&[dim])),
            eps,
        }
    }

    /// Normalises over the last axis of `x`.
    pub fn forward(&self, tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
        let gain = tape.param(&self.gain);
        let bias = tape.param(&self.bias);
        ops::layer_norm(tape, x, &gain, &bias, self.eps)
    }
}

impl<T: Float> Module<T> for LayerNorm<T> {
    fn params(&self) -> Vec<&Param<T>> {
        vec![&self.gain, &self.bias]
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        vec![&mut self.gain, &mut self.bias]
    }
}
