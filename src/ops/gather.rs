//! Reading rows of a table by id: the token embedding, and PKM's weighted read.
//!
//! Both read a few rows of a possibly huge table, so both return a **row-sparse** gradient for the table
//! ([`RowGrad`]): the ids read and one gradient row per id, never a dense `[N, d]` buffer.
//!
//! - [`embedding`]: `out[t] = table[ids[t]]`.
//! - [`weighted_gather`]: the read of a product-key memory (Lample et al. 2019, §3.1),
//!   `out[t] = Σ_j w[t,j]·table[ids[t·k + j]]`, fused so that the `[T, k, d]` block of rows is never
//!   materialised; its table gradient is grouped per distinct row ([`RowGroups`]).

use crate::kernels::parallel::prelude::*;

use crate::grad::{Grad, RowGrad};
use crate::kernels::vector::{axpy, row_dot};
use crate::kernels::{flop_count, Float, RowGroups};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

/// Row `r` of a row-major buffer of rows of `d`.
fn row<T>(data: &[T], d: usize, r: usize) -> &[T] {
    &data[r * d..(r + 1) * d]
}

/// Panics, naming the op, if an id is outside the table.
fn check_ids(op: &str, ids: &[u32], rows: usize) {
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= rows) {
        panic!("{op}: id {bad} is out of range for a table of {rows} rows");
    }
}

fn check_table(op: &str, shape: &[usize]) {
    assert!(shape.len() == 2 && shape[1] > 0, "{op}: the table must be [rows, width > 0], got {shape:?}");
}

struct Embedding {
    ids: Vec<u32>,
}

impl<T: Float> Op<T> for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[table] = inputs else { unreachable!("embedding takes table") };
        let d = table.dim(1);
        let mut out = Vec::with_capacity(self.ids.len() * d);
        for &id in &self.ids {
            out.extend_from_slice(row(table.data(), d, id as usize));
        }
        Tensor::from_vec(&[self.ids.len(), d], out)
    }

    // In the forward pass this was out[t] = table[ids[t]] ([T, d]), so now dtable[ids[t]] += dout[t]:
    // row-sparse, row t of dout under id ids[t] (repeated ids are summed by coalesce()).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[table] = inputs else { unreachable!("embedding takes table") };
        vec![Some(Grad::Rows(RowGrad::new(table.shape(), self.ids.clone(), g.data().to_vec())))]
    }
}

/// Rows `ids` of `table` `[N, d]`, as `[ids.len(), d]`. The table's gradient is row-sparse.
///
/// # Panics
/// If `table` is not `[N, d > 0]` or an id is ≥ N.
pub fn embedding<T: Float>(tape: &mut Tape<T>, table: &Var<T>, ids: &[u32]) -> Var<T> {
    check_table("embedding", table.shape());
    check_ids("embedding", ids, table.shape()[0]);
    tape.apply(Embedding { ids: ids.to_vec() }, &[table])
}

struct WeightedGather {
    ids: Vec<u32>,
}

impl<T: Float> Op<T> for WeightedGather {
    fn name(&self) -> &'static str {
        "weighted_gather"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (table, weights) = (x[0], x[1]);
        let (d, k) = (table.dim(1), weights.dim(1));
        let mut out = vec![T::ZERO; weights.dim(0) * d];
        flop_count::record(2 * weights.numel() * d); // one axpy of a table row per (token, slot)
        out.par_chunks_mut(d).enumerate().for_each(|(t, out_t)| {
            for j in 0..k {
                let id = self.ids[t * k + j] as usize;
                axpy(weights.data()[t * k + j], row(table.data(), d, id), out_t);
            }
        });
        Tensor::from_vec(&[weights.dim(0), d], out)
    }

    // In the forward pass this was out[t] = Σ_j w[t,j]·table[ids[t·k + j]], so now dw[t,j] =
    // dout[t]·table[ids[t·k + j]] and dtable[r] = Σ w[t,j]·dout[t] over the (t, j) that read row r.
    fn backward(&self, x: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let (table, weights) = (x[0], x[1]);
        let (d, k) = (table.dim(1), weights.dim(1));
        // dL/dw[t,j] = dout[t] · table[ids[t,j]]
        let d_weights = needs[1].then(|| {
            flop_count::record(2 * weights.numel() * d);
            let mut dw = vec![T::ZERO; weights.numel()];
            dw.par_chunks_mut(k).enumerate().for_each(|(t, dw_t)| {
                for (j, dw_tj) in dw_t.iter_mut().enumerate() {
                    *dw_tj = row_dot(row(g.data(), d, t), row(table.data(), d, self.ids[t * k + j] as usize));
                }
            });
            Grad::Dense(Tensor::from_vec(weights.shape(), dw))
        });
        // dL/dtable[r] = Σ over the (t, j) that read r of w[t,j]·dout[t]: one row per distinct id.
        let d_table = needs[0].then(|| {
            flop_count::record(2 * weights.numel() * d);
            let groups = RowGroups::new(&self.ids);
            let mut values = vec![T::ZERO; groups.len() * d];
            values.par_chunks_mut(d).enumerate().for_each(|(r, dst)| {
                for &pos in groups.group(r) {
                    axpy(weights.data()[pos as usize], row(g.data(), d, pos as usize / k), dst);
                }
            });
            Grad::Rows(RowGrad::new(table.shape(), groups.rows, values))
        });
        vec![d_table, d_weights]
    }
}

/// PKM's read: `out[t] = Σ_j weights[t,j]·table[ids[t·k + j]]` for `table` `[N, d]`, `weights` `[T, k]`
/// and `T·k` ids; the result is `[T, d]`. Gradients: dense for `weights`, row-sparse (one row per distinct
/// id) for `table`.
///
/// # Panics
/// If `table` is not `[N, d > 0]`, `weights` not `[T, k > 0]`, `ids` not of length T·k, or an id is ≥ N.
pub fn weighted_gather<T: Float>(tape: &mut Tape<T>, table: &Var<T>, ids: &[u32], weights: &Var<T>) -> Var<T> {
    check_table("weighted_gather", table.shape());
    assert!(
        weights.shape().len() == 2 && weights.shape()[1] > 0,
        "weighted_gather: weights must be [T, k > 0], got {:?}",
        weights.shape()
    );
    assert_eq!(
        ids.len(),
        weights.value().numel(),
        "weighted_gather: {} ids for weights {:?}",
        ids.len(),
        weights.shape()
    );
    check_ids("weighted_gather", ids, table.shape()[0]);
    tape.apply(WeightedGather { ids: ids.to_vec() }, &[table, weights])
}
