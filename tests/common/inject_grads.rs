//! A tape holding chosen gradients, for driving the optimizer without a model.
//!
//! Shared by `tests/optim.rs` and `benches/optim.rs`, which include this file by path. It stays out of the
//! library: nothing there needs gradients that did not come from a backward pass.

use peerlm::{Grad, Op, Param, Tape, Tensor, Var};

/// An op whose backward returns fixed gradients: `loss = 0`, `dloss/dinput_i = grads[i]`. It leaves
/// chosen (dense or row-sparse) gradients on the tape the way a real backward would.
struct InjectGrads(Vec<Grad>);

impl Op<f32> for InjectGrads {
    fn name(&self) -> &'static str {
        "inject_grads"
    }
    fn forward(&mut self, _: &[&Tensor]) -> Tensor {
        Tensor::scalar(0.0)
    }
    fn backward(&self, _: &[&Tensor], _: &Tensor, _: &Tensor, _: &[bool]) -> Vec<Option<Grad>> {
        self.0.iter().map(|g| Some(g.clone())).collect()
    }
}

/// A tape after `backward`, holding `grads[i]` as the gradient of `params[i]`.
pub fn tape_with_grads(params: &[&Param], grads: Vec<Grad>) -> Tape {
    let mut tape = Tape::new();
    let vars: Vec<Var> = params.iter().map(|p| tape.param(p)).collect();
    let loss = tape.apply(InjectGrads(grads), &vars.iter().collect::<Vec<_>>());
    tape.backward(&loss);
    tape
}
