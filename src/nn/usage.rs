//! Expert usage: how many experts a sparse layer actually selects, and how evenly.
//!
//! The PEER paper (He 2024, §3.3, after Lample et al. 2019 §4.4) reports two numbers over an evaluation
//! set: the *expert usage*, the share of experts selected at least once, and the *unevenness*, the KL
//! divergence from uniform of the gate-weighted usage: with `z′ᵢ = Σₓ gᵢ(x)` the sum of expert i's gates
//! over all tokens x and `z = z′ / Σ z′`, `KL(z ‖ uniform) = log N + Σᵢ zᵢ log zᵢ`. The same divergence of
//! the plain selection counts is kept as a second figure. Each sparse layer (MoE, PKM, PEER) owns a
//! [`UsageTracker`], off by default so that training pays nothing, and hands it the ids it selected in
//! each forward pass with their gates; every (token, head, slot) selection counts once.

use crate::kernels::Float;

/// Selection counts and summed gates per expert (or per memory slot, for PKM).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertUsage {
    counts: Vec<u64>,
    /// z′ᵢ, the sum of expert i's gates.
    gate_sums: Vec<f64>,
}

impl ExpertUsage {
    /// Zero counts for `num_experts` experts.
    pub fn new(num_experts: usize) -> Self {
        ExpertUsage { counts: vec![0; num_experts], gate_sums: vec![0.0; num_experts] }
    }

    /// Counts one selection of each id with its gate (repeats count as often as they occur).
    pub fn record(&mut self, ids: &[u32], gates: &[f64]) {
        assert_eq!(ids.len(), gates.len(), "ExpertUsage::record: {} ids and {} gates", ids.len(), gates.len());
        for (&id, &gate) in ids.iter().zip(gates) {
            self.counts[id as usize] += 1;
            self.gate_sums[id as usize] += gate;
        }
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Total selections recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The share of experts selected at least once, in [0, 1]: the paper's "expert usage".
    pub fn fraction_used(&self) -> f64 {
        if self.counts.is_empty() {
            return 0.0;
        }
        let used = self.counts.iter().filter(|&&c| c > 0).count();
        used as f64 / self.counts.len() as f64
    }

    /// The paper's unevenness: KL(z ‖ uniform) in nats of the gate-weighted usage z. It is 0 for
    /// perfectly even use and log N when a single expert takes all the weight; 0 when nothing was recorded.
    pub fn kl_from_uniform(&self) -> f64 {
        kl_from_uniform(&self.gate_sums)
    }

    /// KL(p ‖ uniform) of the selection counts, p = counts / total, ignoring the gates.
    pub fn selection_kl_from_uniform(&self) -> f64 {
        let counts: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
        kl_from_uniform(&counts)
    }

    /// Forgets all counts.
    pub fn reset(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.gate_sums.iter_mut().for_each(|g| *g = 0.0);
    }
}

/// `log N + Σ zᵢ log zᵢ` for `z = mass / Σ mass` over the N entries of `mass`, with 0 log 0 = 0; 0 when
/// the total mass is not positive.
fn kl_from_uniform(mass: &[f64]) -> f64 {
    let total: f64 = mass.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy_gap: f64 = mass.iter().filter(|&&m| m > 0.0).map(|&m| (m / total) * (m / total).ln()).sum();
    (mass.len() as f64).ln() + entropy_gap
}

/// A layer's switchable counter over its pool of experts (or memory slots).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageTracker {
    pool: usize,
    usage: Option<ExpertUsage>,
}

impl UsageTracker {
    /// Off, for a pool of `pool` experts.
    pub fn new(pool: usize) -> Self {
        UsageTracker { pool, usage: None }
    }

    /// Starts (with zero counts) or stops counting; turning it on again keeps the counts.
    pub fn switch(&mut self, on: bool) {
        self.usage = if on { self.usage.take().or_else(|| Some(ExpertUsage::new(self.pool))) } else { None };
    }

    /// The usage counted so far; `None` while off.
    pub fn get(&self) -> Option<&ExpertUsage> {
        self.usage.as_ref()
    }

    /// Counts one selection of each id with its gate (`ids[i]` weighted by `gates[i]`), if on.
    pub fn record<T: Float>(&mut self, ids: &[u32], gates: &[T]) {
        if let Some(usage) = &mut self.usage {
            let gates: Vec<f64> = gates.iter().map(|g| g.to_f64()).collect();
            usage.record(ids, &gates);
        }
    }

    /// Forgets the counts, staying on (or off).
    pub fn reset(&mut self) {
        if let Some(usage) = &mut self.usage {
            usage.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_use_has_zero_divergence() {
        let mut usage = ExpertUsage::new(4);
        usage.record(&[0, 1, 2, 3, 3, 2, 1, 0], &[0.5; 8]);
        assert_eq!(usage.fraction_used(), 1.0);
        assert!(usage.kl_from_uniform().abs() < 1e-12);
        assert!(usage.selection_kl_from_uniform().abs() < 1e-12);
    }

    #[test]
    fn one_expert_taking_all_gives_log_n() {
        let mut usage = ExpertUsage::new(8);
        usage.record(&[5, 5, 5], &[0.2, 0.3, 0.9]);
        assert_eq!(usage.fraction_used(), 0.125);
        assert!((usage.kl_from_uniform() - 8f64.ln()).abs() < 1e-12);
        usage.reset();
        assert_eq!(usage.total(), 0);
        assert_eq!(usage.kl_from_uniform(), 0.0);
    }

    #[test]
    fn gates_weigh_the_paper_divergence_and_counts_the_other() {
        // Two tokens over N = 4 experts: token 1 picks experts 0 and 1 with gates 0.75 and 0.25, token 2
        // picks experts 0 and 2 with 0.25 and 0.75. By hand: z′ = (1, 0.25, 0.75, 0), z = (1/2, 1/8, 3/8, 0),
        // KL = ln 4 + ½ ln ½ + ⅛ ln ⅛ + ⅜ ln ⅜ = 0.4120...; counts (2, 1, 1, 0), p = (½, ¼, ¼, 0),
        // KL = ln 4 + ½ ln ½ + ½ ln ¼ = ½ ln 2 = 0.3466...
        let mut usage = ExpertUsage::new(4);
        usage.record(&[0, 1, 0, 2], &[0.75, 0.25, 0.25, 0.75]);
        assert_eq!(usage.fraction_used(), 0.75);
        assert!((usage.kl_from_uniform() - 0.411_979_608_3).abs() < 1e-9, "{}", usage.kl_from_uniform());
        assert!((usage.selection_kl_from_uniform() - 0.346_573_590_3).abs() < 1e-9);
    }

    #[test]
    fn a_tracker_counts_only_while_on() {
        let mut tracker = UsageTracker::new(3);
        tracker.record(&[0], &[1.0f32]);
        assert!(tracker.get().is_none());
        tracker.switch(true);
        tracker.record(&[0, 2], &[0.5f32, 0.5]);
        tracker.switch(true);
        assert_eq!(tracker.get().unwrap().counts(), &[1, 0, 1]);
        tracker.reset();
        assert_eq!(tracker.get().unwrap().total(), 0);
        tracker.switch(false);
        assert!(tracker.get().is_none());
    }
}
