//! AdamW, lazy sparse AdamW and gradient clipping against references written out by hand.

use peerlm::optim::{clip_factor, grad_norm, AdamW, AdamWConfig};
use peerlm::{Grad, Param, ParamKind, Rng, RowGrad, Tensor};

#[path = "common/inject_grads.rs"]
mod inject_grads;
use inject_grads::tape_with_grads;

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 1.0, rng)
}

/// AdamW in f64, written from the formulas (Kingma & Ba 2015 Alg. 1, Loshchilov & Hutter 2019 Alg. 2).
struct ReferenceAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl ReferenceAdamW {
    fn new(p: &Tensor) -> Self {
        let n = p.numel();
        ReferenceAdamW { p: p.data().iter().map(|&x| f64::from(x)).collect(), m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// Updates the elements `range` with gradient `g` at global step `t`.
    fn step(&mut self, range: std::ops::Range<usize>, g: &[f32], t: u64, lr: f64, decay: f64, c: &AdamWConfig) {
        let (b1, b2, eps) = (f64::from(c.beta1), f64::from(c.beta2), f64::from(c.eps));
        for (i, &g) in range.zip(g) {
            let g = f64::from(g);
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let m_hat = self.m[i] / (1.0 - b1.powi(t as i32));
            let v_hat = self.v[i] / (1.0 - b2.powi(t as i32));
            self.p[i] -= lr * decay * self.p[i];
            self.p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

fn assert_close(actual: &[f32], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len());
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!((f64::from(a) - e).abs() <= tol * e.abs().max(1.0), "{what}[{i}]: {a} vs reference {e}");
    }
}

#[test]
fn dense_adamw_matches_f64_reference() {
    let config = AdamWConfig { lr: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.3, table_lr: 0.2 };
    let mut rng = Rng::new(1);
    let mut weight = Param::new("w", ParamKind::Weight, randn(&[3, 5], &mut rng));
    let mut bias = Param::new("b", ParamKind::NoDecay, randn(&[5], &mut rng));
    let mut table = Param::new("table", ParamKind::Table, randn(&[4, 2], &mut rng));
    let mut refs =
        [ReferenceAdamW::new(&weight.value), ReferenceAdamW::new(&bias.value), ReferenceAdamW::new(&table.value)];
    let mut adamw = AdamW::new(config.clone());
    for (t, lr_scale) in [1.0f32, 0.5, 0.25, 1.0, 0.1, 0.7].into_iter().enumerate() {
        let grads: Vec<Tensor> = [&weight, &bias, &table].iter().map(|p| randn(p.value.shape(), &mut rng)).collect();
        let tape = tape_with_grads(&[&weight, &bias, &table], grads.iter().cloned().map(Grad::Dense).collect());
        adamw.step(&mut [&mut weight, &mut bias, &mut table], &tape, lr_scale, 1.0);
        let s = f64::from(lr_scale);
        let (lr, table_lr, wd) =
            (f64::from(config.lr) * s, f64::from(config.table_lr) * s, f64::from(config.weight_decay));
        let settings = [(lr, wd), (lr, 0.0), (table_lr, 0.0)];
        for ((reference, g), (lr, decay)) in refs.iter_mut().zip(&grads).zip(settings) {
            reference.step(0..g.numel(), g.data(), t as u64 + 1, lr, decay, &config);
        }
    }
    assert_eq!(adamw.step_count(), 6);
    assert_eq!(adamw.config(), &config, "the optimizer reports the settings it was built with");
    for (param, reference) in [&weight, &bias, &table].iter().zip(&refs) {
        assert_close(param.value.data(), &reference.p, 2e-6, &param.name);
        let (m, v) = adamw.moments(&param.name).unwrap();
        assert_close(m.data(), &reference.m, 2e-6, "m");
        assert_close(v.data(), &reference.v, 2e-6, "v");
    }
}

#[test]
fn weight_decay_applies_to_weight_params_only() {
    // With zero gradients Adam's step is 0/(0 + ε) = 0: only decoupled decay can move a parameter.
    let config = AdamWConfig { lr: 0.1, weight_decay: 0.5, table_lr: 0.1, ..AdamWConfig::default() };
    let mut rng = Rng::new(2);
    let mut weight = Param::new("w", ParamKind::Weight, randn(&[2, 3], &mut rng));
    let mut norm = Param::new("norm", ParamKind::NoDecay, randn(&[3], &mut rng));
    let mut table = Param::new("table", ParamKind::Table, randn(&[5, 3], &mut rng));
    let (w0, n0, t0) = (weight.value.clone(), norm.value.clone(), table.value.clone());
    let mut adamw = AdamW::new(config);
    for _ in 0..3 {
        let grads = vec![
            Grad::Dense(Tensor::zeros(&[2, 3])),
            Grad::Dense(Tensor::zeros(&[3])),
            Grad::Rows(RowGrad::new(&[5, 3], vec![1, 3], vec![0.0; 6])),
        ];
        let tape = tape_with_grads(&[&weight, &norm, &table], grads);
        adamw.step(&mut [&mut weight, &mut norm, &mut table], &tape, 1.0, 1.0);
    }
    let shrink = (1.0f32 - 0.1 * 0.5).powi(3);
    for (w, w0) in weight.value.data().iter().zip(w0.data()) {
        assert!((w - w0 * shrink).abs() < 1e-6, "{w} vs {}", w0 * shrink);
    }
    assert_eq!(norm.value, n0);
    assert_eq!(table.value, t0);
}

/// Rows `rows` of a `[n, width]` tensor, as a `[rows.len(), width]` tensor.
fn select_rows(t: &Tensor, rows: &[usize]) -> Tensor {
    let width = t.last_dim();
    let data = rows.iter().flat_map(|&r| t.data()[r * width..(r + 1) * width].to_vec()).collect();
    Tensor::from_vec(&[rows.len(), width], data)
}

#[test]
fn lazy_sparse_rows_equal_dense_adam_on_those_rows() {
    let config = AdamWConfig { lr: 0.05, table_lr: 0.1, ..AdamWConfig::default() };
    let (num_rows, width) = (8, 4);
    let touched = [1usize, 4, 6];
    let mut rng = Rng::new(3);
    let mut table = Param::new("table", ParamKind::Table, randn(&[num_rows, width], &mut rng));
    let mut reference = Param::new("table", ParamKind::Table, select_rows(&table.value, &touched));
    let (mut sparse, mut dense) = (AdamW::new(config.clone()), AdamW::new(config));

    // Step 1 touches every row, so untouched rows have non-zero moments that must then stay put.
    let full = randn(&[num_rows, width], &mut rng);
    let tape = tape_with_grads(&[&table], vec![Grad::Dense(full.clone())]);
    sparse.step(&mut [&mut table], &tape, 1.0, 1.0);
    let tape = tape_with_grads(&[&reference], vec![Grad::Dense(select_rows(&full, &touched))]);
    dense.step(&mut [&mut reference], &tape, 1.0, 1.0);
    let after_first = table.value.clone();
    let (m_first, v_first) = sparse.moments("table").map(|(m, v)| (m.clone(), v.clone())).unwrap();

    for _ in 0..4 {
        // Duplicated ids in scrambled order, as a gather's backward produces them.
        let ids = vec![4u32, 1, 4, 6, 1, 4];
        let values: Vec<f32> = (0..ids.len() * width).map(|_| rng.normal() as f32).collect();
        let mut rows = RowGrad::new(&[num_rows, width], ids, values);
        let tape = tape_with_grads(&[&table], vec![Grad::Rows(rows.clone())]);
        sparse.step(&mut [&mut table], &tape, 0.5, 1.0);
        rows.coalesce();
        let coalesced = Tensor::from_vec(&[touched.len(), width], rows.values.clone());
        let tape = tape_with_grads(&[&reference], vec![Grad::Dense(coalesced)]);
        dense.step(&mut [&mut reference], &tape, 0.5, 1.0);
    }

    let (m, v) = sparse.moments("table").unwrap();
    let (ref_m, ref_v) = dense.moments("table").unwrap();
    assert_eq!(select_rows(&table.value, &touched), reference.value, "touched rows");
    assert_eq!(&select_rows(m, &touched), ref_m, "touched first moments");
    assert_eq!(&select_rows(v, &touched), ref_v, "touched second moments");
    let untouched = [0usize, 2, 3, 5, 7];
    for (now, then) in [(&table.value, &after_first), (m, &m_first), (v, &v_first)] {
        let (now, then) = (select_rows(now, &untouched), select_rows(then, &untouched));
        let bits = |t: &Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&now), bits(&then), "untouched rows changed");
    }
}

#[test]
fn lazy_sparse_bias_correction_uses_the_global_step() {
    // Row 2 is first read at step 3: its moments start from zero but are corrected with t = 3.
    let config = AdamWConfig { lr: 0.1, beta1: 0.5, beta2: 0.7, eps: 1e-3, weight_decay: 0.0, table_lr: 0.1 };
    let width = 3;
    let mut rng = Rng::new(4);
    let mut table = Param::new("table", ParamKind::Table, randn(&[4, width], &mut rng));
    let mut reference = ReferenceAdamW::new(&table.value);
    let mut adamw = AdamW::new(config.clone());
    for (t, ids) in [vec![0u32], vec![0, 1], vec![2, 1], vec![2]].into_iter().enumerate() {
        let values: Vec<f32> = (0..ids.len() * width).map(|_| rng.normal() as f32).collect();
        for (k, &row) in ids.iter().enumerate() {
            let row = row as usize;
            let g = &values[k * width..(k + 1) * width];
            reference.step(row * width..(row + 1) * width, g, t as u64 + 1, 0.1, 0.0, &config);
        }
        let tape = tape_with_grads(&[&table], vec![Grad::Rows(RowGrad::new(&[4, width], ids, values))]);
        adamw.step(&mut [&mut table], &tape, 1.0, 1.0);
    }
    assert_close(table.value.data(), &reference.p, 2e-6, "table");
}

#[test]
fn row_sparse_and_dense_gradients_have_the_same_norm() {
    let mut rng = Rng::new(5);
    let weight = Param::new("w", ParamKind::Weight, randn(&[3, 4], &mut rng));
    let table = Param::new("table", ParamKind::Table, randn(&[10, 4], &mut rng));
    let ids = vec![7u32, 2, 7, 7, 0];
    let values: Vec<f32> = (0..ids.len() * 4).map(|_| rng.normal() as f32).collect();
    let rows = RowGrad::new(&[10, 4], ids, values);
    let dense_w = randn(&[3, 4], &mut rng);
    let mut sparse_tape =
        tape_with_grads(&[&weight, &table], vec![Grad::Dense(dense_w.clone()), Grad::Rows(rows.clone())]);
    let mut dense_tape =
        tape_with_grads(&[&weight, &table], vec![Grad::Dense(dense_w.clone()), Grad::Dense(rows.to_dense())]);

    // Row 7 appears three times: its rows are summed before squaring, as in the dense gradient.
    let expected: f64 = dense_w.data().iter().chain(rows.to_dense().data()).map(|&x| f64::from(x).powi(2)).sum();
    let sparse_norm = grad_norm(&[&weight, &table], &mut sparse_tape);
    let dense_norm = grad_norm(&[&weight, &table], &mut dense_tape);
    assert!((sparse_norm - expected.sqrt()).abs() < 1e-9 * expected.sqrt(), "{sparse_norm} vs {}", expected.sqrt());
    assert!((sparse_norm - dense_norm).abs() < 1e-9 * dense_norm);
    // Measuring only coalesces: the gradient itself is unchanged.
    assert_eq!(sparse_tape.grad(&table).unwrap().to_dense(), rows.to_dense());
}

#[test]
fn a_parameter_listed_twice_counts_once() {
    let mut rng = Rng::new(6);
    let weight = Param::new("w", ParamKind::Weight, randn(&[2, 2], &mut rng));
    let grad = randn(&[2, 2], &mut rng);
    let mut tape = tape_with_grads(&[&weight], vec![Grad::Dense(grad.clone())]);
    let norm = grad_norm(&[&weight, &weight], &mut tape);
    let expected: f64 = grad.data().iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    assert!((norm - expected).abs() < 1e-9);
}

/// Clipping inside the step (`grad_scale`) is exactly a step on gradients rescaled beforehand, dense and
/// row-sparse, with duplicates: coalesced first (as `grad_norm` leaves them in training) or summed by the
/// lazy update itself.
#[test]
fn a_scaled_step_equals_a_step_on_scaled_gradients() {
    let mut rng = Rng::new(8);
    let weight = randn(&[6, 5], &mut rng);
    let table = randn(&[40, 8], &mut rng);
    let dense_grad = randn(&[6, 5], &mut rng);
    let ids: Vec<u32> = (0..50).map(|_| rng.below(40) as u32).collect();
    let values: Vec<f32> = (0..ids.len() * 8).map(|_| rng.normal() as f32).collect();
    let scale = 0.37f32;
    let run = |grads: Vec<Grad>, grad_scale: f32, coalesce_first: bool| {
        let mut w = Param::new("w", ParamKind::Weight, weight.clone());
        let mut t = Param::new("table", ParamKind::Table, table.clone());
        let mut tape = tape_with_grads(&[&w, &t], grads);
        if coalesce_first {
            grad_norm(&[&w, &t], &mut tape);
        }
        // Adam's step is nearly scale-free (m/√v); a large eps makes it depend on the scale, so a
        // dropped factor would show.
        let config = AdamWConfig { eps: 0.5, ..AdamWConfig::default() };
        AdamW::new(config).step(&mut [&mut w, &mut t], &tape, 1.0, grad_scale);
        [w.value.data(), t.value.data()].concat()
    };
    let rows = RowGrad::new(&[40, 8], ids.clone(), values.clone());
    let grads = || vec![Grad::Dense(dense_grad.clone()), Grad::Rows(rows.clone())];
    assert_ne!(run(grads(), scale, true), run(grads(), 1.0, true), "the scale must matter");

    let mut scaled_rows = RowGrad::new(&[40, 8], ids, values);
    scaled_rows.coalesce();
    scaled_rows.values.iter_mut().for_each(|g| *g *= scale);
    let scaled_dense = Tensor::from_vec(&[6, 5], dense_grad.data().iter().map(|g| g * scale).collect());
    let rescaled = run(vec![Grad::Dense(scaled_dense), Grad::Rows(scaled_rows)], 1.0, true);
    for coalesce_first in [true, false] {
        assert_eq!(run(grads(), scale, coalesce_first), rescaled, "coalesced first: {coalesce_first}");
    }
}

/// A few clipped AdamW steps on a large dense weight and a large table, returning everything they
/// produce, bit for bit.
fn run_steps() -> (Vec<u32>, Vec<u64>) {
    let mut rng = Rng::new(7);
    let mut weight = Param::new("w", ParamKind::Weight, randn(&[300, 333], &mut rng));
    let mut table = Param::new("table", ParamKind::Table, randn(&[5000, 16], &mut rng));
    let mut adamw = AdamW::new(AdamWConfig::default());
    let mut norms = Vec::new();
    for _ in 0..3 {
        let ids: Vec<u32> = (0..4000).map(|_| rng.below(5000) as u32).collect();
        let values: Vec<f32> = (0..ids.len() * 16).map(|_| rng.normal() as f32).collect();
        let grads = vec![Grad::Dense(randn(&[300, 333], &mut rng)), Grad::Rows(RowGrad::new(&[5000, 16], ids, values))];
        let mut tape = tape_with_grads(&[&weight, &table], grads);
        let norm = grad_norm(&[&weight, &table], &mut tape);
        norms.push(norm.to_bits());
        adamw.step(&mut [&mut weight, &mut table], &tape, 1.0, clip_factor(norm, 10.0));
    }
    let (m, v) = adamw.moments("table").unwrap();
    let bits =
        [weight.value.data(), table.value.data(), m.data(), v.data()].concat().iter().map(|x| x.to_bits()).collect();
    (bits, norms)
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run_steps);
    assert!(on(1) == on(2), "1 and 2 threads disagree");
}

/// How a reference run treats the rows a step does not read.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Skipped {
    /// The documented lazy rule (`optim/sparse_adam.rs`): an unread row's p, m and v stay as they are; a read
    /// row is bias-corrected with the optimizer's global step.
    Untouched,
    /// Not the rule: a read row bias-corrected with its own count of updates.
    RowCount,
    /// Not the rule: dense AdamW, every row updated with a zero gradient when unread.
    ZeroGradient,
}

/// Lazy AdamW on a `[rows, width]` table over `steps` (ids read, duplicates allowed; lr scale), replayed
/// row by row on [`ReferenceAdamW`]: per step, each distinct row read gets the sum of its gradient rows.
fn lazy_reference(
    table: &Tensor,
    steps: &[(Vec<u32>, f32)],
    values: &[Vec<f32>],
    (lr, decay): (f64, f64),
    config: &AdamWConfig,
    skipped: Skipped,
) -> ReferenceAdamW {
    let (rows, width) = (table.dim(0), table.last_dim());
    let mut reference = ReferenceAdamW::new(table);
    let mut reads = vec![0u64; rows];
    for (t, ((ids, lr_scale), values)) in steps.iter().zip(values).enumerate() {
        let lr = lr * f64::from(*lr_scale);
        for (row, row_reads) in reads.iter_mut().enumerate() {
            let mut sum = vec![0.0f64; width];
            let mut read = false;
            for (k, &id) in ids.iter().enumerate() {
                if id as usize == row {
                    read = true;
                    sum.iter_mut().zip(&values[k * width..(k + 1) * width]).for_each(|(s, &g)| *s += f64::from(g));
                }
            }
            let g: Vec<f32> = sum.iter().map(|&s| s as f32).collect();
            let range = row * width..(row + 1) * width;
            if read {
                *row_reads += 1;
                let step = if skipped == Skipped::RowCount { *row_reads } else { t as u64 + 1 };
                reference.step(range, &g, step, lr, decay, config);
            } else if skipped == Skipped::ZeroGradient {
                reference.step(range, &g, t as u64 + 1, lr, decay, config);
            }
        }
    }
    reference
}

#[test]
fn a_row_read_then_skipped_for_steps_then_read_again_follows_the_lazy_rule() {
    let config = AdamWConfig { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-4, weight_decay: 0.3, table_lr: 0.2 };
    let (rows, width) = (6, 3);
    // Row 0 is read at step 1 (twice), skipped at steps 2–4, read again at steps 5 (twice) and 6; row 3
    // is read at steps 1 and 2 only; row 4 never.
    let steps: Vec<(Vec<u32>, f32)> = vec![
        (vec![0, 3, 0], 1.0),
        (vec![3], 0.5),
        (vec![5, 1], 0.8),
        (vec![1], 1.0),
        (vec![2, 0, 5, 0], 0.6),
        (vec![0], 0.3),
    ];
    // A table with weight decay (the embedding's gradient is row-sparse too) and one without.
    for (kind, lr, decay) in
        [(ParamKind::Table, config.table_lr, 0.0), (ParamKind::Weight, config.lr, config.weight_decay)]
    {
        let mut rng = Rng::new(9);
        let start = randn(&[rows, width], &mut rng);
        let values: Vec<Vec<f32>> =
            steps.iter().map(|(ids, _)| (0..ids.len() * width).map(|_| rng.normal() as f32).collect()).collect();
        let mut table = Param::new("table", kind, start.clone());
        let mut adamw = AdamW::new(config.clone());
        for ((ids, lr_scale), values) in steps.iter().zip(&values) {
            let before = table.value.clone();
            let moments_before = adamw.moments("table").map(|(m, v)| (m.clone(), v.clone()));
            let grad = Grad::Rows(RowGrad::new(&[rows, width], ids.clone(), values.clone()));
            let tape = tape_with_grads(&[&table], vec![grad]);
            adamw.step(&mut [&mut table], &tape, *lr_scale, 1.0);
            let unread: Vec<usize> = (0..rows).filter(|r| !ids.contains(&(*r as u32))).collect();
            let bits = |t: &Tensor| select_rows(t, &unread).data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&table.value), bits(&before), "{kind:?}: an unread row moved");
            if let Some((m0, v0)) = moments_before {
                let (m, v) = adamw.moments("table").unwrap();
                assert_eq!((bits(m), bits(v)), (bits(&m0), bits(&v0)), "{kind:?}: an unread row's moments moved");
            }
        }
        let settings = (f64::from(lr), f64::from(decay));
        let want = lazy_reference(&start, &steps, &values, settings, &config, Skipped::Untouched);
        let (m, v) = adamw.moments("table").unwrap();
        assert_close(table.value.data(), &want.p, 2e-6, &format!("{kind:?} p"));
        assert_close(m.data(), &want.m, 2e-6, &format!("{kind:?} m"));
        assert_close(v.data(), &want.v, 2e-6, &format!("{kind:?} v"));
        // The schedule tells the rules apart: either wrong rule ends far outside the tolerance.
        for wrong in [Skipped::RowCount, Skipped::ZeroGradient] {
            let other = lazy_reference(&start, &steps, &values, settings, &config, wrong);
            let gap = other.p.iter().zip(&want.p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(gap > 1e-3, "{kind:?}: {wrong:?} differs from the documented rule by only {gap}");
        }
    }
}
