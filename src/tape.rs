//! Tape-based reverse-mode autodiff: the whole idea of backpropagation in one file.
//!
//! Every differentiable op is a type implementing [`Op`], which carries its `forward` and its `backward`
//! side by side, so an op without a backward does not compile. [`Tape::apply`] runs the forward and, if
//! any input needs a gradient, records a node: the op, its input values and its output value (all shared
//! buffers, no copies). [`Tape::backward`] walks the nodes in reverse order, hands each op the gradient of
//! its output and adds what the op returns into the gradients of its inputs. Adding (never overwriting) is
//! what makes an input used twice receive both contributions. It is micrograd's `_backward` closures,
//! with whole tensors instead of scalars and a list instead of a topological sort: nodes are recorded in
//! execution order, which is already a topological order.
//!
//! Parameters live outside the tape ([`Param`]). Their gradients are left on the tape after `backward`,
//! keyed by [`ParamId`], for the optimizer to read; [`Tape::clear`] then empties the tape for the next
//! step while keeping its vectors' capacity, so a training loop's memory stays flat.
//! [`Tape::no_grad`] makes a tape that records nothing, for evaluation and sampling.

use std::collections::HashMap;

use crate::grad::Grad;
use crate::kernels::Float;
use crate::op_times::{timed, OpTimes, Pass};
use crate::param::{Param, ParamId};
use crate::tensor::Tensor;

/// A differentiable operation: a forward and the matching backward.
pub trait Op<T: Float> {
    /// Shown in error messages.
    fn name(&self) -> &'static str;

    /// Computes the output. `&mut self` lets an op keep what its backward needs (a mask, indices, a
    /// normaliser) beside the input and output values the tape keeps anyway.
    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T>;

    /// Given `grad_out` = dLoss/dOutput, returns dLoss/dInput for each input, in order. An entry may be
    /// `None` only where `needs_grad` is false; the tape panics otherwise, so a backward cannot silently
    /// drop a gradient. Each gradient has the shape of its input.
    fn backward(
        &self,
        inputs: &[&Tensor<T>],
        output: &Tensor<T>,
        grad_out: &Tensor<T>,
        needs_grad: &[bool],
    ) -> Vec<Option<Grad<T>>>;
}

/// A value in a computation: its tensor and, if the tape tracks it, its node.
#[derive(Clone, Debug)]
pub struct Var<T: Float = f32> {
    node: Option<usize>,
    value: Tensor<T>,
}

impl<T: Float> Var<T> {
    pub fn value(&self) -> &Tensor<T> {
        &self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Whether gradients flow back through this value.
    pub fn tracked(&self) -> bool {
        self.node.is_some()
    }
}

enum NodeKind<T: Float> {
    /// A parameter entered with [`Tape::param`]: its gradient is kept after `backward`.
    Param(ParamId),
    /// The result of an op.
    Op { op: Box<dyn Op<T>>, inputs: Vec<Option<usize>>, input_values: Vec<Tensor<T>> },
}

struct Node<T: Float> {
    kind: NodeKind<T>,
    value: Tensor<T>,
}

pub struct Tape<T: Float = f32> {
    recording: bool,
    nodes: Vec<Node<T>>,
    grads: Vec<Option<Grad<T>>>,
    param_grads: HashMap<ParamId, Grad<T>>,
    /// Per-op wall-clock times, if [`Tape::time_ops`] asked for them.
    times: Option<OpTimes>,
}

impl<T: Float> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Tape<T> {
    /// A tape that records, for training.
    pub fn new() -> Self {
        Tape { recording: true, nodes: Vec::new(), grads: Vec::new(), param_grads: HashMap::new(), times: None }
    }

    /// A tape that records nothing: ops only compute values (evaluation, sampling).
    pub fn no_grad() -> Self {
        Tape { recording: false, ..Self::new() }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A value no gradient flows to (data, masks).
    pub fn constant(&self, value: Tensor<T>) -> Var<T> {
        Var { node: None, value }
    }

    /// Enters a parameter; its gradient is available from [`Tape::grad`] after `backward`.
    pub fn param(&mut self, param: &Param<T>) -> Var<T> {
        let value = param.value.clone();
        if !self.recording {
            return Var { node: None, value };
        }
        self.nodes.push(Node { kind: NodeKind::Param(param.id()), value: value.clone() });
        Var { node: Some(self.nodes.len() - 1), value }
    }

    /// Runs `op` forward on `inputs` and, if any input is tracked, records it for `backward`.
    pub fn apply(&mut self, op: impl Op<T> + 'static, inputs: &[&Var<T>]) -> Var<T> {
        self.apply_then(op, inputs, |_| ()).0
    }

    /// [`Tape::apply`], handing the op to `read` after its forward and before the tape keeps it: for an
    /// op whose forward finds more than its output (the ids a top-k selected, a batch's statistics).
    pub fn apply_then<O: Op<T> + 'static, R>(
        &mut self,
        mut op: O,
        inputs: &[&Var<T>],
        read: impl FnOnce(&mut O) -> R,
    ) -> (Var<T>, R) {
        let values: Vec<&Tensor<T>> = inputs.iter().map(|v| &v.value).collect();
        let value = timed(&mut self.times, Pass::Forward, op.name(), || op.forward(&values));
        let extra = read(&mut op);
        let tracked = self.recording && inputs.iter().any(|v| v.tracked());
        if !tracked {
            return (Var { node: None, value }, extra);
        }
        let kind = NodeKind::Op {
            op: Box::new(op),
            inputs: inputs.iter().map(|v| v.node).collect(),
            input_values: inputs.iter().map(|v| v.value.clone()).collect(),
        };
        self.nodes.push(Node { kind, value: value.clone() });
        (Var { node: Some(self.nodes.len() - 1), value }, extra)
    }

    /// Back-propagates from a scalar `loss`; parameter gradients are then readable with [`Tape::grad`].
    /// Recorded nodes are released, so the optimizer may update the parameters in place.
    ///
    /// # Panics
    /// If `loss` does not hold exactly one element, or is untracked (it depends on no parameter, or the tape
    /// was not recording). A `loss` from before this tape's last `backward` or `clear` may panic too.
    pub fn backward(&mut self, loss: &Var<T>) {
        assert_eq!(loss.value.numel(), 1, "backward: loss must be a scalar, got shape {:?}", loss.shape());
        let Some(loss_node) = loss.node else {
            panic!("backward: the loss does not depend on any parameter (was the tape recording?)");
        };
        self.grads.clear();
        self.grads.resize_with(self.nodes.len(), || None);
        self.grads[loss_node] = Some(Grad::Dense(Tensor::full(loss.shape(), T::ONE)));
        for id in (0..=loss_node).rev() {
            let Some(grad) = self.grads[id].take() else { continue };
            let node = &self.nodes[id];
            match &node.kind {
                NodeKind::Param(param) => match self.param_grads.get_mut(param) {
                    Some(acc) => acc.accumulate(grad),
                    None => {
                        self.param_grads.insert(*param, grad);
                    }
                },
                NodeKind::Op { op, inputs, input_values } => {
                    let grad_out = grad.to_dense();
                    let backward = || backward_node(op.as_ref(), inputs, input_values, &node.value, &grad_out);
                    let in_grads = timed(&mut self.times, Pass::Backward, op.name(), backward);
                    for (input, g) in inputs.iter().zip(in_grads) {
                        if let (Some(input), Some(g)) = (input, g) {
                            match &mut self.grads[*input] {
                                Some(acc) => acc.accumulate(g),
                                slot => *slot = Some(g),
                            }
                        }
                    }
                }
            }
        }
        self.nodes.clear();
    }

    /// The gradient of `param` from the last `backward`, if the loss depended on it.
    pub fn grad(&self, param: &Param<T>) -> Option<&Grad<T>> {
        self.param_grads.get(&param.id())
    }

    /// Mutable access, for coalescing row-sparse gradients in place.
    pub fn grad_mut(&mut self, param: &Param<T>) -> Option<&mut Grad<T>> {
        self.param_grads.get_mut(&param.id())
    }

    /// Times every op's forward and backward from now on, summed by op name across steps (`clear` keeps
    /// them): see [`crate::op_times`].
    pub fn time_ops(&mut self) {
        self.times.get_or_insert_with(OpTimes::default);
    }

    /// The times summed since [`Tape::time_ops`], if it was called.
    pub fn op_times(&self) -> Option<&OpTimes> {
        self.times.as_ref()
    }

    /// Adds the time since `start` of a phase outside the tape (the optimizer, say), if timing is on.
    pub fn add_time(&mut self, pass: Pass, name: &'static str, start: std::time::Instant) {
        if let Some(times) = &mut self.times {
            times.add(pass, name, start.elapsed());
        }
    }

    /// Forgets nodes and gradients, keeping allocated capacity for the next step.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.grads.clear();
        self.param_grads.clear();
    }

    /// Recorded nodes, and the capacity kept for them (a flat-memory test watches both).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.nodes.capacity()
    }
}

/// Calls one op's backward and checks its answer: one gradient per input, present wherever needed,
/// shaped like its input.
fn backward_node<T: Float>(
    op: &dyn Op<T>,
    inputs: &[Option<usize>],
    input_values: &[Tensor<T>],
    output: &Tensor<T>,
    grad_out: &Tensor<T>,
) -> Vec<Option<Grad<T>>> {
    let needs_grad: Vec<bool> = inputs.iter().map(Option::is_some).collect();
    let values: Vec<&Tensor<T>> = input_values.iter().collect();
    let grads = op.backward(&values, output, grad_out, &needs_grad);
    assert_eq!(
        grads.len(),
        inputs.len(),
        "op {}: backward returned {} gradients for {} inputs",
        op.name(),
        grads.len(),
        inputs.len()
    );
    for (i, (g, needed)) in grads.iter().zip(&needs_grad).enumerate() {
        match g {
            None if *needed => panic!("op {}: backward dropped the gradient of input {i}", op.name()),
            Some(g) => assert_eq!(
                g.shape(),
                values[i].shape(),
                "op {}: gradient of input {i} has shape {:?}, the input {:?}",
                op.name(),
                g.shape(),
                values[i].shape()
            ),
            None => {}
        }
    }
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::ParamKind;

    /// y = a * b elementwise: the smallest op with two inputs.
    struct Mul;
    impl Op<f64> for Mul {
        fn name(&self) -> &'static str {
            "test_mul"
        }
        fn forward(&mut self, x: &[&Tensor<f64>]) -> Tensor<f64> {
            Tensor::from_vec(x[0].shape(), x[0].data().iter().zip(x[1].data()).map(|(a, b)| a * b).collect())
        }
        fn backward(&self, x: &[&Tensor<f64>], _: &Tensor<f64>, g: &Tensor<f64>, _: &[bool]) -> Vec<Option<Grad<f64>>> {
            let times = |t: &Tensor<f64>| {
                Tensor::from_vec(t.shape(), t.data().iter().zip(g.data()).map(|(a, b)| a * b).collect())
            };
            vec![Some(Grad::Dense(times(x[1]))), Some(Grad::Dense(times(x[0])))]
        }
    }

    /// A broken op that forgets its second input.
    struct Forgetful;
    impl Op<f64> for Forgetful {
        fn name(&self) -> &'static str {
            "forgetful"
        }
        fn forward(&mut self, x: &[&Tensor<f64>]) -> Tensor<f64> {
            x[0].clone()
        }
        fn backward(&self, _: &[&Tensor<f64>], _: &Tensor<f64>, g: &Tensor<f64>, _: &[bool]) -> Vec<Option<Grad<f64>>> {
            vec![Some(Grad::Dense(g.clone())), None]
        }
    }

    fn scalar_param(x: f64) -> Param<f64> {
        Param::new("x", ParamKind::Weight, Tensor::scalar(x))
    }

    #[test]
    fn input_used_twice_gets_both_contributions() {
        let p = scalar_param(3.0);
        let mut tape = Tape::new();
        let x = tape.param(&p);
        let y = tape.apply(Mul, &[&x, &x]); // y = x², dy/dx = 2x
        tape.backward(&y);
        assert_eq!(tape.grad(&p).unwrap().to_dense().item(), 6.0);
    }

    #[test]
    fn a_timed_tape_counts_every_forward_and_backward_and_keeps_them_across_steps() {
        let p = scalar_param(3.0);
        let mut tape = Tape::new();
        assert!(tape.op_times().is_none(), "timing is off unless asked for");
        tape.time_ops();
        for _ in 0..2 {
            let x = tape.param(&p);
            let y = tape.apply(Mul, &[&x, &x]);
            let z = tape.apply(Mul, &[&y, &x]); // z = x³, dz/dx = 3x² = 27
            tape.backward(&z);
            assert_eq!(tape.grad(&p).unwrap().to_dense().item(), 27.0);
            tape.clear();
        }
        let start = std::time::Instant::now();
        tape.add_time(Pass::Update, "optimizer", start);
        let mut calls: Vec<_> = tape.op_times().unwrap().largest_first().iter().map(|r| (r.0, r.1, r.3)).collect();
        calls.sort();
        let want = [(Pass::Forward, "test_mul", 4), (Pass::Backward, "test_mul", 4), (Pass::Update, "optimizer", 1)];
        assert_eq!(calls, want);
    }

    #[test]
    fn param_entered_twice_accumulates() {
        let p = scalar_param(3.0);
        let q = scalar_param(5.0);
        let mut tape = Tape::new();
        let (x1, x2, c) = (tape.param(&p), tape.param(&p), tape.param(&q));
        let y1 = tape.apply(Mul, &[&x1, &c]);
        let y2 = tape.apply(Mul, &[&y1, &x2]); // y = c·x², dy/dx = 2cx = 30, dy/dc = x² = 9
        tape.backward(&y2);
        assert_eq!(tape.grad(&p).unwrap().to_dense().item(), 30.0);
        assert_eq!(tape.grad(&q).unwrap().to_dense().item(), 9.0);
    }

    #[test]
    #[should_panic(expected = "forgetful: backward dropped the gradient of input 1")]
    fn dropped_gradient_is_caught() {
        let (p, q) = (scalar_param(1.0), scalar_param(2.0));
        let mut tape = Tape::new();
        let (a, b) = (tape.param(&p), tape.param(&q));
        let y = tape.apply(Forgetful, &[&a, &b]);
        tape.backward(&y);
    }

    #[test]
    fn constants_need_no_gradient() {
        let p = scalar_param(2.0);
        let mut tape = Tape::new();
        let x = tape.param(&p);
        let c = tape.constant(Tensor::scalar(7.0));
        let y = tape.apply(Forgetful, &[&x, &c]); // input 1 is constant: None is allowed
        tape.backward(&y);
        assert_eq!(tape.grad(&p).unwrap().to_dense().item(), 1.0);
    }

    #[test]
    fn no_grad_records_nothing() {
        let p = scalar_param(2.0);
        let mut tape = Tape::no_grad();
        let x = tape.param(&p);
        let y = tape.apply(Mul, &[&x, &x]);
        assert_eq!(y.value().item(), 4.0);
        assert!(tape.is_empty() && !y.tracked());
    }

    #[test]
    fn backward_releases_parameter_buffers() {
        let mut p = scalar_param(2.0);
        let mut tape = Tape::new();
        let x = tape.param(&p);
        let y = tape.apply(Mul, &[&x, &x]);
        tape.backward(&y);
        drop((x, y));
        // The optimizer's in-place update must not copy: the tape no longer shares the buffer.
        let before = p.value.data().as_ptr();
        p.value.data_mut()[0] -= 0.1;
        assert_eq!(before, p.value.data().as_ptr());
    }
}
