//! The language-model loss: mean cross-entropy between logits and target token ids, fused with the
//! log-softmax it contains.
//!
//! For a row of logits `x` over a vocabulary of `V` and its target `t`, the loss is
//! `−log softmax(x)[t] = lse(x) − x[t]` with `lse(x) = ln Σ exp(x)`, averaged over the rows whose target
//! is not `ignore_index` (padding). Its gradient is `softmax(x) − onehot(t)`, divided by that count.
//! Fusing means the forward never materialises the `[N, V]` softmax: it keeps one `lse` per row, and the
//! backward rebuilds `softmax(x) = exp(x − lse)` on the fly while writing the gradient.

use crate::grad::Grad;
use crate::kernels::memory::par_vec_filled;
use crate::kernels::vector::{for_each_row, log_sum_exp, zip_map, CHUNK, PARALLEL_MIN};
use crate::kernels::{Float, Lanes};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct CrossEntropy<T> {
    targets: Vec<u32>,
    ignore_index: Option<u32>,
    /// `ln Σ exp(logits)` of every row, from the forward.
    log_sum_exp: Vec<T>,
    /// Rows whose target counts (not ignored).
    count: usize,
}

impl<T> CrossEntropy<T> {
    fn counts(&self, row: usize) -> bool {
        Some(self.targets[row]) != self.ignore_index
    }
}

impl<T: Float> Op<T> for CrossEntropy<T> {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x] = inputs else { unreachable!("cross_entropy takes logits") };
        let (logits, vocab) = (x.data(), x.last_dim());
        assert!(vocab > 0, "cross_entropy: logits {:?} have an empty last axis", x.shape());
        let rows = logits.len() / vocab;
        assert_eq!(
            self.targets.len(),
            rows,
            "cross_entropy: {} targets for logits {:?} ({rows} rows)",
            self.targets.len(),
            x.shape()
        );
        for (row, &t) in self.targets.iter().enumerate() {
            assert!(
                !self.counts(row) || (t as usize) < vocab,
                "cross_entropy: target {t} of row {row} is outside the vocabulary of {vocab}"
            );
        }
        let mut lse = vec![T::ZERO; rows];
        for_each_row(&mut lse, 1, vocab, |row, out| out[0] = log_sum_exp(&logits[row * vocab..][..vocab]));
        self.count = (0..rows).filter(|&row| self.counts(row)).count();
        // Row losses are added in row order, so the result does not depend on the thread count.
        let mut total = T::ZERO;
        for (row, &l) in lse.iter().enumerate() {
            if self.counts(row) {
                total += l - logits[row * vocab + self.targets[row] as usize];
            }
        }
        self.log_sum_exp = lse;
        let loss = if self.count == 0 { T::ZERO } else { total / T::from_usize(self.count) };
        Tensor::scalar(loss)
    }

    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        // In the forward pass this was loss = mean over counted rows of lse(x) − x[t], so now
        // dx = (softmax(x) − onehot(t)) · g / count for a counted row, 0 for an ignored one.
        let &[x] = inputs else { unreachable!("cross_entropy takes logits") };
        let (logits, vocab) = (x.data(), x.last_dim());
        let scale = if self.count == 0 { T::ZERO } else { g.item() / T::from_usize(self.count) };
        let sv = T::Simd::splat(scale);
        // Each row is zeroed in cache by the task that then writes it: no pass zeroes the [N, V] gradient first.
        let min_rows_per_task = if logits.len() < PARALLEL_MIN { usize::MAX } else { CHUNK.div_ceil(vocab) };
        let (dx, _) = par_vec_filled(logits.len(), vocab, min_rows_per_task, T::ZERO, |row, d| {
            if self.count == 0 || !self.counts(row) {
                return; // ignored rows keep a zero gradient
            }
            let lse = self.log_sum_exp[row];
            let lv = T::Simd::splat(lse);
            let row_logits = &logits[row * vocab..][..vocab];
            zip_map([row_logits], d, |[v]| (v - lv).exp() * sv, |[v]| (v - lse).exp() * scale);
            d[self.targets[row] as usize] -= scale;
        });
        vec![Some(Grad::Dense(Tensor::from_vec(x.shape(), dx)))]
    }
}

/// Mean cross-entropy of `logits` `[.., V]` (rows flattened) against one target id per row, skipping
/// rows whose target equals `ignore_index`. Returns a scalar; 0 (with zero gradient) if every row is
/// ignored.
///
/// # Panics
/// If `V` is 0, the number of targets differs from the number of rows, or a counted target is `≥ V`.
pub fn cross_entropy<T: Float>(
    tape: &mut Tape<T>,
    logits: &Var<T>,
    targets: &[u32],
    ignore_index: Option<u32>,
) -> Var<T> {
    let op = CrossEntropy { targets: targets.to_vec(), ignore_index, log_sum_exp: Vec::new(), count: 0 };
    tape.apply(op, &[logits])
}
