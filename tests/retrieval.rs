//! Brute-force equivalence of the retrieval ops: top-k against a full sort, product-key top-k against
//! the exhaustive top-k over all n² keys, the fused PEER experts and the weighted gather against naive
//! versions that materialise the gathered rows; plus thread-count independence (1 vs 2 threads,
//! bit-identical) and the batch-norm running statistics.

use std::cmp::Ordering;

use peerlm::kernels::topk::ranks_before;
use peerlm::kernels::topk_rows;
use peerlm::ops::{self, BatchNormStats, ExpertActivation};
use peerlm::{Float, Grad, Op, Param, ParamKind, Rng, Tape, Tensor, Var};
use proptest::prelude::*;

/// The reference ranking: sort every (value, index) pair under the documented rule.
fn sorted_by_rank<T: Float>(mut pairs: Vec<(T, u32)>) -> Vec<(T, u32)> {
    pairs.sort_by(|&a, &b| if ranks_before(a, b) { Ordering::Less } else { Ordering::Greater });
    pairs
}

fn random_ids(len: usize, n: usize, rng: &mut Rng) -> Vec<u32> {
    (0..len).map(|_| rng.below(n as u64) as u32).collect()
}

fn naive_dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `loss = Σ out ⊙ weights`, so the gradient reaching `out` is `weights`.
struct WeightedSum<T: Float> {
    weights: Tensor<T>,
}

impl<T: Float> Op<T> for WeightedSum<T> {
    fn name(&self) -> &'static str {
        "weighted_sum"
    }
    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        Tensor::scalar(x[0].data().iter().zip(self.weights.data()).map(|(&a, &w)| a * w).sum())
    }
    fn backward(&self, _: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, _: &[bool]) -> Vec<Option<Grad<T>>> {
        let data = self.weights.data().iter().map(|&w| w * g.item()).collect();
        vec![Some(Grad::Dense(Tensor::from_vec(self.weights.shape(), data)))]
    }
}

/// Runs `f` on parameters made of `inputs`, back-propagates `Σ out ⊙ upstream`, and returns the output
/// and every input's gradient.
fn value_and_grads<T: Float>(
    inputs: &[Tensor<T>],
    upstream: &Tensor<T>,
    mut f: impl FnMut(&mut Tape<T>, &[Var<T>]) -> Var<T>,
) -> (Tensor<T>, Vec<Grad<T>>) {
    let params: Vec<Param<T>> = inputs.iter().map(|t| Param::new("p", ParamKind::Weight, t.clone())).collect();
    let mut tape = Tape::new();
    let vars: Vec<Var<T>> = params.iter().map(|p| tape.param(p)).collect();
    let out = f(&mut tape, &vars);
    let value = out.value().clone();
    let loss = tape.apply(WeightedSum { weights: upstream.clone() }, &[&out]);
    drop((vars, out));
    tape.backward(&loss);
    (value, params.iter().map(|p| tape.grad(p).expect("every input gets a gradient").clone()).collect())
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

/// Row-sparse and coalesced: ids strictly ascending.
fn assert_coalesced(grad: &Grad<f64>, what: &str) {
    let Grad::Rows(rows) = grad else { panic!("{what}: expected a row-sparse gradient") };
    assert!(rows.rows.windows(2).all(|w| w[0] < w[1]), "{what}: rows not coalesced: {:?}", rows.rows);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Values from a small set (many ties) with some NaN and infinities, against a full sort.
    #[test]
    fn topk_rows_equals_full_sort(rows in 1usize..5, n in 1usize..40, k_frac in 0.0f64..=1.0, seed in any::<u64>()) {
        let k = (k_frac * n as f64) as usize;
        let mut rng = Rng::new(seed);
        let palette = [f64::NAN, f64::NEG_INFINITY, f64::INFINITY, -1.0, 0.0, 0.5, 2.0];
        let values: Vec<f64> = (0..rows * n).map(|_| palette[rng.below(palette.len() as u64) as usize]).collect();
        let (top_values, top_ids) = topk_rows(&values, n, k);
        for r in 0..rows {
            let pairs = values[r * n..(r + 1) * n].iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
            let want = &sorted_by_rank(pairs)[..k];
            let want_ids: Vec<u32> = want.iter().map(|p| p.1).collect();
            prop_assert_eq!(&top_ids[r * k..(r + 1) * k], &want_ids[..]);
            for (got, w) in top_values[r * k..(r + 1) * k].iter().zip(want) {
                prop_assert!(got.to_bits() == w.0.to_bits() || (got.is_nan() && w.0.is_nan()));
            }
        }
    }

    /// Product-key top-k equals the exhaustive top-k over all n² sums q1·K1[i] + q2·K2[j].
    #[test]
    fn product_key_topk_equals_brute_force(
        rows in 1usize..70, n in 2usize..=16, dh in 1usize..9, k_frac in 0.0f64..1.0, seed in any::<u64>()
    ) {
        let k = 1 + (k_frac * n as f64) as usize;
        let mut rng = Rng::new(seed);
        let query = Tensor::<f64>::randn(&[rows, 2 * dh], 1.0, &mut rng);
        let keys1 = Tensor::<f64>::randn(&[n, dh], 1.0, &mut rng);
        let keys2 = Tensor::<f64>::randn(&[n, dh], 1.0, &mut rng);
        let mut tape = Tape::no_grad();
        let (q, k1, k2) = (tape.constant(query.clone()), tape.constant(keys1.clone()), tape.constant(keys2.clone()));
        let (scores, ids) = ops::product_key_topk(&mut tape, &q, &k1, &k2, k);
        prop_assert_eq!(scores.shape(), &[rows, k]);
        for r in 0..rows {
            let q_r = &query.data()[r * 2 * dh..(r + 1) * 2 * dh];
            let mut all = Vec::with_capacity(n * n);
            for i in 0..n {
                for j in 0..n {
                    let s = naive_dot(&q_r[..dh], &keys1.data()[i * dh..(i + 1) * dh])
                        + naive_dot(&q_r[dh..], &keys2.data()[j * dh..(j + 1) * dh]);
                    all.push((s, (i * n + j) as u32));
                }
            }
            let want = &sorted_by_rank(all)[..k];
            let want_ids: Vec<u32> = want.iter().map(|p| p.1).collect();
            prop_assert_eq!(&ids[r * k..(r + 1) * k], &want_ids[..]);
            for (got, w) in scores.value().data()[r * k..(r + 1) * k].iter().zip(want) {
                prop_assert!((got - w.0).abs() <= 1e-12, "row {}: score {} vs {}", r, got, w.0);
            }
        }
    }

    /// The fused experts against a version that materialises the gathered `[T, m, d]` rows.
    #[test]
    fn peer_experts_equal_materialised_reference(
        tokens in 1usize..40, n in 1usize..30, d in 1usize..40, m in 1usize..9, gelu in any::<bool>(), seed in any::<u64>()
    ) {
        let act = if gelu { ExpertActivation::Gelu } else { ExpertActivation::Relu };
        let mut rng = Rng::new(seed);
        let x = Tensor::<f64>::randn(&[tokens, d], 1.0, &mut rng);
        let u = Tensor::<f64>::randn(&[n, d], 1.0, &mut rng);
        let v = Tensor::<f64>::randn(&[n, d], 1.0, &mut rng);
        let gates = Tensor::<f64>::uniform(&[tokens, m], 0.0, 1.0, &mut rng);
        let upstream = Tensor::<f64>::randn(&[tokens, d], 1.0, &mut rng);
        let ids = random_ids(tokens * m, n, &mut rng);
        let inputs = [x.clone(), u.clone(), v.clone(), gates.clone()];
        let (out, grads) =
            value_and_grads(&inputs, &upstream, |t, w| ops::peer_experts(t, &w[0], &w[1], &w[2], &w[3], &ids, act));

        // The reference: gather [T, m, d] blocks, then plain loops.
        let gather = |table: &Tensor<f64>| -> Vec<f64> {
            ids.iter().flat_map(|&id| table.data()[id as usize * d..(id as usize + 1) * d].to_vec()).collect()
        };
        let (u_sel, v_sel) = (gather(&u), gather(&v));
        let mut want_out = vec![0.0; tokens * d];
        let (mut dx, mut dgates) = (vec![0.0; tokens * d], vec![0.0; tokens * m]);
        let (mut du, mut dv) = (vec![0.0; n * d], vec![0.0; n * d]);
        for t in 0..tokens {
            let (x_t, g_t) = (&x.data()[t * d..(t + 1) * d], &upstream.data()[t * d..(t + 1) * d]);
            for j in 0..m {
                let sel = t * m + j;
                let (u_row, v_row) = (&u_sel[sel * d..(sel + 1) * d], &v_sel[sel * d..(sel + 1) * d]);
                let (h, gate, id) = (naive_dot(u_row, x_t), gates.data()[sel], ids[sel] as usize);
                let vg = naive_dot(v_row, g_t);
                dgates[sel] = act.apply(h) * vg;
                for c in 0..d {
                    want_out[t * d + c] += gate * act.apply(h) * v_row[c];
                    dx[t * d + c] += gate * act.derivative(h) * vg * u_row[c];
                    du[id * d + c] += gate * act.derivative(h) * vg * x_t[c];
                    dv[id * d + c] += gate * act.apply(h) * g_t[c];
                }
            }
        }
        assert_close(out.data(), &want_out, "out");
        assert_close(grads[0].to_dense().data(), &dx, "dx");
        assert_close(grads[1].to_dense().data(), &du, "du");
        assert_close(grads[2].to_dense().data(), &dv, "dv");
        assert_close(grads[3].to_dense().data(), &dgates, "dgates");
        assert_coalesced(&grads[1], "du");
        assert_coalesced(&grads[2], "dv");
    }

    /// PKM's fused weighted read against gathering `[T, k, d]` first.
    #[test]
    fn weighted_gather_equals_materialised_reference(
        tokens in 1usize..30, n in 1usize..20, d in 1usize..30, k in 1usize..6, seed in any::<u64>()
    ) {
        let mut rng = Rng::new(seed);
        let table = Tensor::<f64>::randn(&[n, d], 1.0, &mut rng);
        let weights = Tensor::<f64>::randn(&[tokens, k], 1.0, &mut rng);
        let upstream = Tensor::<f64>::randn(&[tokens, d], 1.0, &mut rng);
        let ids = random_ids(tokens * k, n, &mut rng);
        let (out, grads) = value_and_grads(&[table.clone(), weights.clone()], &upstream, |t, w| {
            ops::weighted_gather(t, &w[0], &ids, &w[1])
        });
        let (mut want, mut dtable, mut dweights) = (vec![0.0; tokens * d], vec![0.0; n * d], vec![0.0; tokens * k]);
        for t in 0..tokens {
            for j in 0..k {
                let (id, w) = (ids[t * k + j] as usize, weights.data()[t * k + j]);
                let row = &table.data()[id * d..(id + 1) * d];
                let g_t = &upstream.data()[t * d..(t + 1) * d];
                dweights[t * k + j] = naive_dot(row, g_t);
                for c in 0..d {
                    want[t * d + c] += w * row[c];
                    dtable[id * d + c] += w * g_t[c];
                }
            }
        }
        assert_close(out.data(), &want, "out");
        assert_close(grads[0].to_dense().data(), &dtable, "dtable");
        assert_close(grads[1].to_dense().data(), &dweights, "dweights");
        assert_coalesced(&grads[0], "dtable");
    }
}

/// Output and gradients (as raw bits) of the expert op, weighted gather and product-key top-k on a
/// rayon pool of `threads` threads.
fn sparse_ops_on_threads(threads: usize) -> Vec<Vec<u32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut rng = Rng::new(42);
        let (tokens, n, d, m) = (300, 64, 72, 16);
        let x = Tensor::<f32>::randn(&[tokens, d], 1.0, &mut rng);
        let u = Tensor::<f32>::randn(&[n, d], 1.0, &mut rng);
        let v = Tensor::<f32>::randn(&[n, d], 1.0, &mut rng);
        let gates = Tensor::<f32>::uniform(&[tokens, m], 0.0, 1.0, &mut rng);
        let upstream = Tensor::<f32>::randn(&[tokens, d], 1.0, &mut rng);
        let ids = random_ids(tokens * m, n, &mut rng);
        let bits = |t: &Tensor<f32>| t.data().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let mut all = Vec::new();
        let (out, grads) = value_and_grads(&[x.clone(), u, v, gates.clone()], &upstream, |t, w| {
            ops::peer_experts(t, &w[0], &w[1], &w[2], &w[3], &ids, ExpertActivation::Gelu)
        });
        all.push(bits(&out));
        all.extend(grads.iter().map(|g| bits(&g.to_dense())));
        let table = Tensor::<f32>::randn(&[n, d], 1.0, &mut rng);
        let (out, grads) =
            value_and_grads(&[table, gates], &upstream, |t, w| ops::weighted_gather(t, &w[0], &ids, &w[1]));
        all.push(bits(&out));
        all.extend(grads.iter().map(|g| bits(&g.to_dense())));
        let keys1 = Tensor::<f32>::randn(&[n, d / 2], 1.0, &mut rng);
        let keys2 = Tensor::<f32>::randn(&[n, d / 2], 1.0, &mut rng);
        let upstream = Tensor::<f32>::randn(&[tokens, m], 1.0, &mut rng);
        let mut selected = Vec::new();
        let (out, grads) = value_and_grads(&[x, keys1, keys2], &upstream, |t, w| {
            let (scores, ids) = ops::product_key_topk(t, &w[0], &w[1], &w[2], m);
            selected = ids;
            scores
        });
        all.push(selected);
        all.push(bits(&out));
        all.extend(grads.iter().map(|g| bits(&g.to_dense())));
        all
    })
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    assert_eq!(sparse_ops_on_threads(1), sparse_ops_on_threads(2));
}

#[test]
fn batch_norm_updates_and_then_uses_running_statistics() {
    // One column [1, 2, 3, 6]: mean 3, biased variance 3.5, unbiased 14/3.
    let x = Tensor::<f64>::from_vec(&[4, 1], vec![1.0, 2.0, 3.0, 6.0]);
    let mut stats = BatchNormStats::new(1, 0.25);
    let mut tape = Tape::no_grad();
    let (xv, gain, bias) =
        (tape.constant(x), tape.constant(Tensor::full(&[1], 2.0)), tape.constant(Tensor::full(&[1], 0.5)));
    let y = ops::batch_norm(&mut tape, &xv, &gain, &bias, &mut stats, true, 0.0);
    let want_train: Vec<f64> = [1.0, 2.0, 3.0, 6.0].iter().map(|v| (v - 3.0) / 3.5f64.sqrt() * 2.0 + 0.5).collect();
    assert_close(y.value().data(), &want_train, "training output");
    assert_close(&stats.mean, &[0.75 * 0.0 + 0.25 * 3.0], "running mean");
    assert_close(&stats.var, &[0.75 * 1.0 + 0.25 * 14.0 / 3.0], "running var");
    let before = stats.clone();
    let y = ops::batch_norm(&mut tape, &xv, &gain, &bias, &mut stats, false, 0.0);
    let want_eval: Vec<f64> =
        [1.0, 2.0, 3.0, 6.0].iter().map(|v| (v - before.mean[0]) / before.var[0].sqrt() * 2.0 + 0.5).collect();
    assert_close(y.value().data(), &want_eval, "evaluation output");
    assert_eq!(stats, before, "evaluation must not update the running statistics");
}

/// Product-key top-k of `query` `[rows, 2·dh]` against `keys1`, `keys2` `[n, dh]`, run in `T` on the given
/// values: the ids and scores against the exhaustive top-k over all n² pairs, and the backward of
/// `Σ upstream ⊙ scores` against a plain loop over the selected pairs, all computed in f64 from the same
/// values. `tol` bounds |got − want| / (1 + |want|) for the scores and the gradients.
fn product_keys_match_brute_force<T: Float>(
    query: &[f64],
    keys1: &[f64],
    keys2: &[f64],
    upstream: &[f64],
    (n, dh, k): (usize, usize, usize),
    tol: f64,
) {
    let rows = query.len() / (2 * dh);
    let tensor = |shape: &[usize], v: &[f64]| Tensor::<T>::from_vec(shape, v.iter().map(|&x| T::from_f64(x)).collect());
    // The values the op sees, back in f64 (exact), for the references.
    let round = |v: &[f64]| v.iter().map(|&x| T::from_f64(x).to_f64()).collect::<Vec<f64>>();
    let (q, k1, k2, up) = (round(query), round(keys1), round(keys2), round(upstream));
    let inputs = [tensor(&[rows, 2 * dh], &q), tensor(&[n, dh], &k1), tensor(&[n, dh], &k2)];
    let mut ids = Vec::new();
    let (scores, grads) = value_and_grads(&inputs, &tensor(&[rows, k], &up), |t, w| {
        let (scores, selected) = ops::product_key_topk(t, &w[0], &w[1], &w[2], k);
        ids = selected;
        scores
    });

    let close = |got: f64, want: f64| (got - want).abs() <= tol * (1.0 + want.abs());
    let (mut dq, mut dk1, mut dk2) = (vec![0.0; rows * 2 * dh], vec![0.0; n * dh], vec![0.0; n * dh]);
    for r in 0..rows {
        let (q1, q2) = q[r * 2 * dh..(r + 1) * 2 * dh].split_at(dh);
        let mut all = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                let s = naive_dot(q1, &k1[i * dh..(i + 1) * dh]) + naive_dot(q2, &k2[j * dh..(j + 1) * dh]);
                all.push((s, (i * n + j) as u32));
            }
        }
        let want = &sorted_by_rank(all)[..k];
        let want_ids: Vec<u32> = want.iter().map(|p| p.1).collect();
        assert_eq!(&ids[r * k..(r + 1) * k], &want_ids[..], "{} row {r} of {rows}: ids", T::NAME);
        for (s, &(want_score, id)) in want.iter().enumerate() {
            let got = scores.data()[r * k + s].to_f64();
            assert!(close(got, want_score), "{} row {r}, rank {s}: score {got} vs {want_score}", T::NAME);
            // Selection (r, s) pairs K1[i] with K2[j]: its score moves with q and with those two rows only.
            let (i, j, g) = (id as usize / n, id as usize % n, up[r * k + s]);
            for a in 0..dh {
                dq[r * 2 * dh + a] += g * k1[i * dh + a];
                dq[r * 2 * dh + dh + a] += g * k2[j * dh + a];
                dk1[i * dh + a] += g * q1[a];
                dk2[j * dh + a] += g * q2[a];
            }
        }
    }
    for (what, grad, want) in [("dq", &grads[0], &dq), ("dK1", &grads[1], &dk1), ("dK2", &grads[2], &dk2)] {
        let got = grad.to_dense();
        for (e, (g, w)) in got.data().iter().zip(want.iter()).enumerate() {
            assert!(close(g.to_f64(), *w), "{} {what}[{e}]: {} vs {w}", T::NAME, g.to_f64());
        }
    }
}

/// 2,500 query rows: ten blocks of the selection's 256 rows (the last partial) and two chunks of the
/// backward's 2,048 (the second partial). The proptest above stays within one block, f64 only.
#[test]
fn product_key_topk_over_many_row_blocks_equals_brute_force() {
    let (rows, n, dh, k) = (2500, 16, 4, 5);
    let mut rng = Rng::new(11);
    let mut draw = |len: usize, f: &mut dyn FnMut(&mut Rng) -> f64| (0..len).map(|_| f(&mut rng)).collect::<Vec<f64>>();
    let normal = &mut |rng: &mut Rng| rng.normal();
    let (q, k1, k2, up) =
        (draw(rows * 2 * dh, normal), draw(n * dh, normal), draw(n * dh, normal), draw(rows * k, normal));
    product_keys_match_brute_force::<f64>(&q, &k1, &k2, &up, (n, dh, k), 1e-12);
    // Quarters in [-2, 2]: every score and gradient sum is exact in f32 (multiples of 1/16, far below
    // 2²⁴), so the f32 and f64 runs must match exactly, ids included, with exact ties (frequent on this
    // grid) broken towards the lower id.
    let grid = &mut |rng: &mut Rng| (rng.below(17) as f64 - 8.0) / 4.0;
    let (q, k1, k2, up) = (draw(rows * 2 * dh, grid), draw(n * dh, grid), draw(n * dh, grid), draw(rows * k, grid));
    product_keys_match_brute_force::<f32>(&q, &k1, &k2, &up, (n, dh, k), 0.0);
    product_keys_match_brute_force::<f64>(&q, &k1, &k2, &up, (n, dh, k), 0.0);
}
