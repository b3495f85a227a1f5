//! Expert usage: how many experts a sparse layer actually selects, and how evenly.
//!
//! The PEER paper (He 2024, §3.4) reports two numbers over an evaluation set: the *expert usage*, the share
//! of experts selected at least once, and the KL divergence of the selection distribution from uniform, a
//! measure of imbalance. A layer that tracks usage calls [`ExpertUsage::record`] with the ids it selected
//! in each forward pass; every (token, head, slot) selection counts once.

/// Selection counts per expert (or per memory slot, for PKM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertUsage {
    counts: Vec<u64>,
}

impl ExpertUsage {
    /// A layer's counter switch: starts counting in `slot` (from zero, or keeping the counts if it is already
    /// on) or stops and drops the counts.
    pub fn switch(slot: &mut Option<ExpertUsage>, on: bool, num_experts: usize) {
        *slot = if on { slot.take().or_else(|| Some(ExpertUsage::new(num_experts))) } else { None };
    }

    /// Zero counts for `num_experts` experts.
    pub fn new(num_experts: usize) -> Self {
        ExpertUsage { counts: vec![0; num_experts] }
    }

    /// Counts one selection of each id (repeats count as often as they occur).
    pub fn record(&mut self, ids: &[u32]) {
        for &id in ids {
            self.counts[id as usize] += 1;
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

    /// KL(p ‖ u) in nats, where p_i = counts_i / total is the selection distribution over the N experts and
    /// u_i = 1/N is uniform: Σ_i p_i ln(N p_i), with 0 ln 0 = 0. It is 0 for perfectly even use and
    /// ln N when a single expert takes every selection. 0 when nothing was recorded.
    pub fn kl_from_uniform(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let n = self.counts.len() as f64;
        self.counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                p * (n * p).ln()
            })
            .sum()
    }

    /// Forgets all counts.
    pub fn reset(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_use_has_zero_divergence() {
        let mut usage = ExpertUsage::new(4);
        usage.record(&[0, 1, 2, 3, 3, 2, 1, 0]);
        assert_eq!(usage.fraction_used(), 1.0);
        assert!(usage.kl_from_uniform().abs() < 1e-12);
    }

    #[test]
    fn one_expert_taking_all_gives_ln_n() {
        let mut usage = ExpertUsage::new(8);
        usage.record(&[5, 5, 5]);
        assert_eq!(usage.fraction_used(), 0.125);
        assert!((usage.kl_from_uniform() - 8f64.ln()).abs() < 1e-12);
        usage.reset();
        assert_eq!(usage.total(), 0);
        assert_eq!(usage.kl_from_uniform(), 0.0);
    }
}
