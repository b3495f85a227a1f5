//! The PEER expert mixture as one differentiable op (He 2024, §2):
//! `out[t] = Σ_j gates[t,j]·σ(u[id]·x[t])·v[id]` over the m experts `id = expert_ids[t·m + j]` a token
//! retrieved.
//!
//! The loops live in [`crate::kernels::peer`]; this file checks shapes and ids, groups the ids by expert
//! once for both passes (the kernels walk the tables in that order), keeps the pre-activations between
//! forward and backward, and wraps the expert tables' gradients as coalesced
//! row-sparse [`RowGrad`]s (one row per distinct expert), so a table of a million experts is never
//! touched densely.

use crate::grad::{Grad, RowGrad};
use crate::kernels::peer::{experts_backward, experts_forward, ExpertBatch};
use crate::kernels::{ExpertActivation, Float, RowGroups};
use crate::tape::{Op, Tape, Var};
use crate::tensor::Tensor;

struct PeerExperts<T> {
    /// The positions of the expert ids grouped by expert, the order both passes walk in.
    groups: RowGroups,
    act: ExpertActivation,
    /// u[id]·x[t] per (token, expert) in the order of `groups.occurrences`, kept by forward for backward.
    pre: Vec<T>,
}

impl<T: Float> PeerExperts<T> {
    fn batch<'a>(&'a self, x: &[&'a Tensor<T>]) -> ExpertBatch<'a, T> {
        ExpertBatch {
            x: x[0].data(),
            u: x[1].data(),
            v: x[2].data(),
            gates: x[3].data(),
            groups: &self.groups,
            d: x[0].dim(1),
            m: x[3].dim(1),
            act: self.act,
        }
    }
}

impl<T: Float> Op<T> for PeerExperts<T> {
    fn name(&self) -> &'static str {
        "peer_experts"
    }

    fn forward(&mut self, x: &[&Tensor<T>]) -> Tensor<T> {
        let (out, pre) = experts_forward(&self.batch(x));
        self.pre = pre;
        Tensor::from_vec(x[0].shape(), out)
    }

    fn backward(&self, x: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let grads = experts_backward(&self.batch(x), &self.pre, g.data());
        let rows = &self.groups.rows;
        vec![
            needs[0].then(|| Grad::Dense(Tensor::from_vec(x[0].shape(), grads.dx))),
            needs[1].then(|| Grad::Rows(RowGrad::new(x[1].shape(), rows.clone(), grads.du))),
            needs[2].then(|| Grad::Rows(RowGrad::new(x[2].shape(), rows.clone(), grads.dv))),
            needs[3].then(|| Grad::Dense(Tensor::from_vec(x[3].shape(), grads.dgates))),
        ]
    }
}

/// The fused PEER experts: `x` `[T, d]`, expert tables `u`, `v` `[N, d]`, `gates` `[T, m]` (softmaxed by
/// the caller), `expert_ids` of length `T·m` (each `< N`); returns `[T, d]`. Gradients: dense for `x` and
/// `gates`, row-sparse and coalesced for `u` and `v`. Never materialises a `[T, m, d]` tensor.
pub fn peer_experts<T: Float>(
    tape: &mut Tape<T>,
    x: &Var<T>,
    u: &Var<T>,
    v: &Var<T>,
    gates: &Var<T>,
    expert_ids: &[u32],
    act: ExpertActivation,
) -> Var<T> {
    let (xs, us, vs, gs) = (x.shape(), u.shape(), v.shape(), gates.shape());
    assert!(
        xs.len() == 2 && xs[1] > 0 && us.len() == 2 && us == vs && us[1] == xs[1],
        "peer_experts: x {xs:?} must be [T, d] and u {us:?}, v {vs:?} both [N, d]"
    );
    assert!(
        gs.len() == 2 && gs[0] == xs[0] && gs[1] > 0,
        "peer_experts: gates {gs:?} must be [T, m] with T = {} and m > 0",
        xs[0]
    );
    assert_eq!(expert_ids.len(), gs[0] * gs[1], "peer_experts: {} expert ids for gates {gs:?}", expert_ids.len());
    if let Some(bad) = expert_ids.iter().find(|&&id| id as usize >= us[0]) {
        panic!("peer_experts: expert id {bad} is out of range for {} experts", us[0]);
    }
    let groups = RowGroups::new(expert_ids);
    tape.apply(PeerExperts { groups, act, pre: Vec::new() }, &[x, u, v, gates])
}
