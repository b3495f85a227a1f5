//! PEER's expert mixture (He 2024, eq. 3) and its backward, token by token: the loops to read against the
//! paper. [`super::peer`] computes the same sums in another order, for speed; its tests compare the two.
//!
//! Shapes: T tokens of width d; an expert table of N rows for each of u and v; each token retrieved
//! m = h·k experts (k per head, h heads: the heads' outputs are summed, so they are one list here).
//!
//! ```text
//! z[t,j]  = u[id]·x[t]                         id = ids[t·m + j], the expert's one hidden neuron
//! out[t]  = Σ_j g[t,j] · σ(z[t,j]) · v[id]     eq. 3: f(x) = Σ_i g_i(x) e_i(x), e_i(x) = σ(u_iᵀx) v_i
//! ```

use super::{ExpertActivation, Float};

/// The inputs of one mixture, as flat row-major slices.
#[derive(Clone, Copy)]
pub struct Mixture<'a, T> {
    /// Tokens `[T, d]`.
    pub x: &'a [T],
    /// Down vectors `[N, d]`.
    pub u: &'a [T],
    /// Up vectors `[N, d]`.
    pub v: &'a [T],
    /// Gates `[T, m]`.
    pub gates: &'a [T],
    /// Expert ids `[T, m]`, each `< N`.
    pub ids: &'a [u32],
    /// Width of a token and of an expert row.
    pub d: usize,
    pub act: ExpertActivation,
}

/// The gradients of one mixture, all dense.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureGrads<T> {
    /// `[T, d]`.
    pub dx: Vec<T>,
    /// `[T, m]`.
    pub dgates: Vec<T>,
    /// `[N, d]`, zero in the rows of experts no token retrieved.
    pub du: Vec<T>,
    /// `[N, d]`.
    pub dv: Vec<T>,
}

impl<T: Float> Mixture<'_, T> {
    fn row<'t>(&self, table: &'t [T], id: u32) -> &'t [T] {
        &table[id as usize * self.d..(id as usize + 1) * self.d]
    }

    /// `out` `[T, d]`.
    pub fn forward(&self) -> Vec<T> {
        let (d, m) = (self.d, self.gates.len() / (self.x.len() / self.d).max(1));
        let mut out = vec![T::ZERO; self.x.len()];
        for (t, out_t) in out.chunks_exact_mut(d).enumerate() {
            let x_t = &self.x[t * d..(t + 1) * d];
            for j in 0..m {
                let (id, g) = (self.ids[t * m + j], self.gates[t * m + j]);
                let z: T = self.row(self.u, id).iter().zip(x_t).map(|(&a, &b)| a * b).sum();
                let weight = g * self.act.apply(z);
                for (o, &v) in out_t.iter_mut().zip(self.row(self.v, id)) {
                    *o += weight * v;
                }
            }
        }
        out
    }

    /// In the forward pass this was `out[t] = Σ_j g·σ(z)·v[id]` with `z = u[id]·x[t]`; so now, given
    /// `dout` `[T, d]` and with `vg = v[id]·dout[t]` (how much the loss changes along v[id]):
    ///
    /// ```text
    /// dgate[t,j] = σ(z)·vg                   dv[id] += g·σ(z)·dout[t]
    /// dz         = g·σ'(z)·vg                dx[t]  += dz·u[id]          du[id] += dz·x[t]
    /// ```
    pub fn backward(&self, dout: &[T]) -> MixtureGrads<T> {
        let (d, m) = (self.d, self.gates.len() / (self.x.len() / self.d).max(1));
        let mut grads = MixtureGrads {
            dx: vec![T::ZERO; self.x.len()],
            dgates: vec![T::ZERO; self.gates.len()],
            du: vec![T::ZERO; self.u.len()],
            dv: vec![T::ZERO; self.v.len()],
        };
        for t in 0..self.x.len() / d {
            let (x_t, dout_t) = (&self.x[t * d..(t + 1) * d], &dout[t * d..(t + 1) * d]);
            for j in 0..m {
                let (id, g) = (self.ids[t * m + j], self.gates[t * m + j]);
                let (u_row, v_row) = (self.row(self.u, id), self.row(self.v, id));
                let z: T = u_row.iter().zip(x_t).map(|(&a, &b)| a * b).sum();
                let vg: T = v_row.iter().zip(dout_t).map(|(&a, &b)| a * b).sum();
                grads.dgates[t * m + j] = self.act.apply(z) * vg;
                let dz = g * self.act.derivative(z) * vg;
                let rows = id as usize * d..(id as usize + 1) * d;
                for c in 0..d {
                    grads.dv[rows.start + c] += g * self.act.apply(z) * dout_t[c];
                    grads.dx[t * d + c] += dz * u_row[c];
                    grads.du[rows.start + c] += dz * x_t[c];
                }
            }
        }
        grads
    }
}
