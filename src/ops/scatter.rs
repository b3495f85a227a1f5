//! Weighted scatter of rows: how a mixture of experts puts each expert's outputs back in token order.
//!
//! An MoE layer gathers the tokens routed to an expert into a small batch, runs the expert on it, and must
//! then add each output row, scaled by its gate, into the row of the token it came from:
//! `out[rows[i]] += weights[i] · y[i]`. A token routed to several experts receives the sum of their
//! weighted outputs; a token routed to none gets zeros.
//!
//! Backward: `dy[i] = weights[i] · dout[rows[i]]` and `dweights[i] = ⟨y[i], dout[rows[i]]⟩`.

use crate::grad::Grad;
use crate::kernels::{flop_count, Float};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct ScatterRows {
    rows: Vec<u32>,
    total_rows: usize,
}

impl<T: Float> Op<T> for ScatterRows {
    fn name(&self) -> &'static str {
        "scatter_rows"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (y, weights) = (x[0], x[1]);
        assert!(
            y.rank() == 2 && weights.shape() == [y.dim(0)] && self.rows.len() == y.dim(0),
            "scatter_rows: y {:?}, weights {:?} and {} row ids do not agree",
            y.shape(),
            weights.shape(),
            self.rows.len()
        );
        let width = y.dim(1);
        flop_count::record(2 * y.numel());
        let mut out = vec![T::ZERO; self.total_rows * width];
        for (i, &row) in self.rows.iter().enumerate() {
            let row = row as usize;
            assert!(row < self.total_rows, "scatter_rows: row {row} out of {} rows", self.total_rows);
            let w = weights.data()[i];
            let dst = &mut out[row * width..(row + 1) * width];
            for (d, &s) in dst.iter_mut().zip(&y.data()[i * width..(i + 1) * width]) {
                *d += w * s;
            }
        }
        Tensor::from_vec(&[self.total_rows, width], out)
    }

    // In the forward pass this was out[rows[i]] += weights[i]·y[i], so now dy[i] = weights[i]·dout[rows[i]]
    // and dweights[i] = ⟨y[i], dout[rows[i]]⟩.
    fn backward(&self, x: &[&Tensor<T>], _out: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (y, weights) = (x[0], x[1]);
        let width = y.dim(1);
        let grad_row = |i: usize| {
            let row = self.rows[i] as usize;
            &g.data()[row * width..(row + 1) * width]
        };
        let grad_y = needs[0].then(|| {
            flop_count::record(y.numel()); // a scaled copy: one multiply per element
            let mut dy = Vec::with_capacity(y.numel());
            for (i, &w) in weights.data().iter().enumerate() {
                dy.extend(grad_row(i).iter().map(|&g| w * g));
            }
            Grad::Dense(Tensor::from_vec(y.shape(), dy))
        });
        let grad_weights = needs[1].then(|| {
            flop_count::record(2 * y.numel());
            let dw = (0..self.rows.len())
                .map(|i| {
                    let y_row = &y.data()[i * width..(i + 1) * width];
                    y_row.iter().zip(grad_row(i)).fold(T::ZERO, |acc, (&a, &b)| acc + a * b)
                })
                .collect();
            Grad::Dense(Tensor::from_vec(weights.shape(), dw))
        });
        vec![grad_y, grad_weights]
    }
}

/// `out [total_rows, d]` with `out[rows[i]] += weights[i] · y[i]` for each row `i` of `y [n, d]`;
/// `weights` is `[n]`. Rows not named stay zero.
///
/// # Panics
/// If `y` is not 2-D, `weights` is not `[n]`, `rows` does not hold n ids, or an id is ≥ `total_rows`.
pub fn scatter_rows<T: Float>(
    tape: &mut Tape<T>,
    y: &Var<T>,
    rows: &[u32],
    weights: &Var<T>,
    total_rows: usize,
) -> Var<T> {
    tape.apply(ScatterRows { rows: rows.to_vec(), total_rows }, &[y, weights])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_weighted_and_summed_into_place() {
        let mut tape = Tape::<f64>::no_grad();
        let y = tape.constant(Tensor::from_vec(&[3, 2], vec![1., 2., 3., 4., 5., 6.]));
        let weights = tape.constant(Tensor::from_vec(&[3], vec![1., 10., 100.]));
        let out = scatter_rows(&mut tape, &y, &[2, 0, 2], &weights, 4);
        assert_eq!(out.value().data(), &[30., 40., 0., 0., 501., 602., 0., 0.]);
    }
}
