//! Reductions: the sum or mean of a whole tensor (a loss is one), and the sum, mean or max over the last
//! axis (a row of a row-major tensor).
//!
//! Sum and mean share one op: the output is the sum of each row of `width` elements times a `scale`
//! (1 or 1/width); the whole tensor is one row. Backward hands every element of a row the row's upstream
//! gradient times the same `scale`. Max sends the gradient to one element per row, the first maximum.

use crate::grad::Grad;
use crate::kernels::vector::{argmax, broadcast_rows, for_each_row, sum as sum_slice};
use crate::kernels::Float;
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Which elements form one output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Axes {
    All,
    Last,
}

impl Axes {
    /// The output shape and the number of input elements per output, for input shape `shape`.
    fn split(self, op: &str, shape: &[usize]) -> (Vec<usize>, usize) {
        match self {
            Axes::All => (Vec::new(), shape.iter().product()),
            Axes::Last => {
                let (&width, lead) = shape.split_last().unwrap_or_else(|| panic!("{op}: a scalar has no last axis"));
                (lead.to_vec(), width)
            }
        }
    }
}

struct Sum {
    axes: Axes,
    mean: bool,
}

impl Sum {
    fn label(&self) -> &'static str {
        match (self.axes, self.mean) {
            (Axes::All, false) => "sum",
            (Axes::All, true) => "mean",
            (Axes::Last, false) => "sum_last",
            (Axes::Last, true) => "mean_last",
        }
    }

    /// 1/width for a mean, 1 for a sum. A mean over nothing is undefined.
    fn scale<T: Float>(&self, width: usize) -> T {
        if !self.mean {
            return T::ONE;
        }
        assert!(width > 0, "{}: mean over an empty axis", self.label());
        T::ONE / T::from_usize(width)
    }
}

impl<T: Float> Op<T> for Sum {
    fn name(&self) -> &'static str {
        self.label()
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("a reduction takes x") };
        let (out_shape, width) = self.axes.split(self.label(), x.shape());
        let scale: T = self.scale(width);
        let mut out = vec![T::ZERO; out_shape.iter().product()];
        let data = x.data();
        for_each_row(&mut out, 1, width, |row, y| y[0] = scale * sum_slice(&data[row * width..][..width]));
        Tensor::from_vec(&out_shape, out)
    }

    // In the forward pass this was y[r] = scale·Σ_i x[r, i] (scale 1 for a sum, 1/width for a mean), so
    // now dx[r, i] = scale·g[r] for every i.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("a reduction takes x") };
        let (_, width) = self.axes.split(self.label(), x.shape());
        let scale: T = self.scale(width);
        let row_grads: Vec<T> = g.data().iter().map(|&g| scale * g).collect();
        let dx = broadcast_rows(&row_grads, width);
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Max over the last axis; remembers which element won in each row.
struct MaxLast {
    winners: Vec<usize>,
}

impl<T: Float> Op<T> for MaxLast {
    fn name(&self) -> &'static str {
        "max_last"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("max_last takes x") };
        let (out_shape, width) = Axes::Last.split("max_last", x.shape());
        assert!(width > 0, "max_last: the last axis of {:?} is empty", x.shape());
        let data = x.data();
        self.winners = vec![0; out_shape.iter().product()];
        for_each_row(&mut self.winners, 1, width, |row, w| w[0] = argmax(&data[row * width..][..width]));
        let out = self.winners.iter().enumerate().map(|(row, &w)| data[row * width + w]).collect();
        Tensor::from_vec(&out_shape, out)
    }

    // In the forward pass this was y[r] = x[r, w] with w the row's first maximum (in `winners`), so now
    // dx[r, w] = g[r] and 0 elsewhere in the row.
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x] = inputs else { unreachable!("max_last takes x") };
        let width = x.last_dim();
        let mut dx = vec![T::ZERO; x.numel()];
        for (row, (&w, &g)) in self.winners.iter().zip(g.data()).enumerate() {
            dx[row * width + w] = g;
        }
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// The sum of all elements, as a scalar (shape `[]`).
pub fn sum<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Sum { axes: Axes::All, mean: false }, &[x])
}

/// The mean of all elements, as a scalar (shape `[]`).
///
/// # Panics
/// If `x` has no elements.
pub fn mean<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Sum { axes: Axes::All, mean: true }, &[x])
}

/// Sums over the last axis: `[.., n] -> [..]`.
///
/// # Panics
/// If `x` is a scalar (it has no last axis).
pub fn sum_last<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Sum { axes: Axes::Last, mean: false }, &[x])
}

/// Means over the last axis: `[.., n] -> [..]`.
///
/// # Panics
/// If `x` is a scalar or `n = 0`.
pub fn mean_last<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(Sum { axes: Axes::Last, mean: true }, &[x])
}

/// Max over the last axis: `[.., n] -> [..]`.
///
/// The gradient of each row goes entirely to the *first* index holding the row's maximum (ties go to
/// the lowest index), the usual subgradient choice; the other tied elements get 0.
///
/// # Panics
/// If `x` is a scalar, `n = 0`, or a row is all NaN (it has no maximum).
pub fn max_last<T: Float>(tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
    tape.apply(MaxLast { winners: Vec::new() }, &[x])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::{Param, ParamKind};

    #[test]
    fn max_last_gradient_goes_to_first_tied_maximum() {
        let p = Param::new("x", ParamKind::Weight, Tensor::<f64>::from_vec(&[2, 3], vec![1., 5., 5., 2., 0., 7.]));
        let mut tape = Tape::new();
        let x = tape.param(&p);
        let m = max_last(&mut tape, &x);
        assert_eq!(m.value().data(), &[5.0, 7.0]);
        let total = sum(&mut tape, &m);
        tape.backward(&total);
        assert_eq!(tape.grad(&p).unwrap().to_dense().data(), &[0., 1., 0., 0., 0., 1.]);
    }

    #[test]
    fn shapes_drop_the_reduced_axes() {
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]));
        assert_eq!(sum(&mut tape, &x).value(), &Tensor::scalar(21.0));
        assert_eq!(mean(&mut tape, &x).value(), &Tensor::scalar(3.5));
        assert_eq!(sum_last(&mut tape, &x).value(), &Tensor::from_vec(&[2], vec![6., 15.]));
        assert_eq!(mean_last(&mut tape, &x).value(), &Tensor::from_vec(&[2], vec![2., 5.]));
        let v = tape.constant(Tensor::from_vec(&[3], vec![1., 2., 3.]));
        assert_eq!(sum_last(&mut tape, &v).value(), &Tensor::scalar(6.0));
    }
}
