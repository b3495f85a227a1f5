//! An op written outside peerlm, its backward, and its gradient check: softplus, `y = ln(1 + eˣ)`.
//!
//! Run: `cargo run --release --example custom_op`. It checks the right backward (`dy/dx = σ(x)`, the
//! logistic function) and then a deliberately wrong one (`dy/dx = σ(x)/2`), which the check must catch.

use peerlm::gradcheck::{check_gradients, tensor};
use peerlm::{Float, Grad, Op, Tape, Tensor, Var};

/// Softplus, with a backward that is right or (for the demonstration) off by a factor of two.
struct Softplus {
    wrong_backward: bool,
}

impl<T: Float> Op<T> for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }

    // y = ln(1 + eˣ), written as max(x, 0) + ln(1 + e^−|x|) so that large |x| neither overflows nor
    // loses the small term.
    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("softplus takes one input") };
        let y = x.data().iter().map(|&v| v.max(T::ZERO) + (T::ONE + (-v.abs()).exp()).ln()).collect();
        Tensor::from_vec(x.shape(), y)
    }

    // In the forward pass this was y = ln(1 + eˣ); so now dx = g · eˣ/(1 + eˣ) = g · σ(x).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("softplus takes one input") };
        let factor = T::from_f64(if self.wrong_backward { 0.5 } else { 1.0 });
        let dx = x.data().iter().zip(g.data()).map(|(&v, &g)| g * factor / (T::ONE + (-v).exp())).collect();
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

fn softplus<T: Float>(tape: &mut Tape<T>, x: &Var<T>, wrong_backward: bool) -> Var<T> {
    tape.apply(Softplus { wrong_backward }, &[x])
}

fn main() {
    let x = tensor(&[4, 5], -4.0, 4.0, 1);
    match check_gradients(std::slice::from_ref(&x), |tape, v| softplus(tape, &v[0], false)) {
        Ok(()) => println!("softplus: the backward matches finite differences"),
        Err(e) => panic!("softplus: the right backward failed its check: {e}"),
    }
    match check_gradients(std::slice::from_ref(&x), |tape, v| softplus(tape, &v[0], true)) {
        Ok(()) => panic!("softplus: the wrong backward passed its check"),
        Err(e) => println!("softplus with a wrong backward (σ(x)/2): caught, {e}"),
    }
}
