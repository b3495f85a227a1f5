//! The PEER expert mixture as one differentiable op (He 2024, §2, eq. 3):
//! `out[t] = Σ_j gates[t,j]·σ(u[id]·x[t])·v[id]` over the m = h·k experts `id = expert_ids[t·m + j]` a
//! token retrieved.
//!
//! The arithmetic, token by token, is `kernels/peer_reference.rs`; the loops that run are
//! `kernels/peer.rs`, the same sums in expert order. This file checks shapes and ids, groups the ids by expert
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
    /// The pre-activations z = u[id]·x[t] per (token, expert) in the order of `groups.occurrences`, kept by
    /// forward for backward.
    pre: Vec<T>,
}

impl<T: Float> PeerExperts<T> {
    fn batch<'a>(&'a self, inputs: &[&'a Tensor<T>]) -> ExpertBatch<'a, T> {
        let &[x, u, v, gates] = inputs else { unreachable!("peer_experts takes x, u, v, gates") };
        ExpertBatch {
            x: x.data(),
            u: u.data(),
            v: v.data(),
            gates: gates.data(),
            groups: &self.groups,
            d: x.dim(1),
            m: gates.dim(1),
            act: self.act,
        }
    }
}

impl<T: Float> Op<T> for PeerExperts<T> {
    fn name(&self) -> &'static str {
        "peer_experts"
    }

    // out[t] = Σ_j gates[t,j]·σ(z)·v[id] with z = u[id]·x[t]; keeps every z for the backward.
    fn forward(&mut self, inputs: &[&Tensor<T>]) -> Tensor<T> {
        let &[x, _, _, _] = inputs else { unreachable!("peer_experts takes x, u, v, gates") };
        let (out, pre) = experts_forward(&self.batch(inputs));
        self.pre = pre;
        Tensor::from_vec(x.shape(), out)
    }

    // In the forward pass this was out[t] = Σ_j g·σ(z)·v[id]; so now, with vg = v[id]·dout[t]:
    // dgate = σ(z)·vg, dv[id] += g·σ(z)·dout[t], and through dz = g·σ'(z)·vg, dx[t] += dz·u[id] and
    // du[id] += dz·x[t] (the loops: `kernels/peer_reference.rs`, token by token).
    fn backward(&self, inputs: &[&Tensor<T>], _: &Tensor<T>, g: &Tensor<T>, needs: &[bool]) -> Vec<Option<Grad<T>>> {
        let &[x, u, v, gates] = inputs else { unreachable!("peer_experts takes x, u, v, gates") };
        let grads = experts_backward(&self.batch(inputs), &self.pre, g.data());
        let rows = &self.groups.rows;
        vec![
            needs[0].then(|| Grad::Dense(Tensor::from_vec(x.shape(), grads.dx))),
            needs[1].then(|| Grad::Rows(RowGrad::new(u.shape(), rows.clone(), grads.du))),
            needs[2].then(|| Grad::Rows(RowGrad::new(v.shape(), rows.clone(), grads.dv))),
            needs[3].then(|| Grad::Dense(Tensor::from_vec(gates.shape(), grads.dgates))),
        ]
    }
}

/// The fused PEER experts: `x` `[T, d]`, expert tables `u`, `v` `[N, d]`, `gates` `[T, m]` (softmaxed by
/// the caller), `expert_ids` of length `T·m` (each `< N`); returns `[T, d]`. Gradients: dense for `x` and
/// `gates`, row-sparse and coalesced for `u` and `v`. Never materialises a `[T, m, d]` tensor.
///
/// # Panics
/// If the shapes do not fit together as above (with d, m > 0), or an expert id is ≥ N.
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
