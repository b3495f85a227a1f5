//! Expert usage: how many experts a sparse layer actually selects, and how evenly.
//!
//! The PEER paper (He 2024, §3.4) reports two numbers over an evaluation set: the *expert usage*, the share
//! of experts selected at least once, and the KL divergence of the selection distribution from uniform, a
//! measure of imbalance. Each sparse layer (MoE, PKM, PEER) owns a [`UsageTracker`], off by default so that
//! training pays nothing, and hands it the ids it selected in each forward pass; every (token, head, slot)
//! selection counts once.

/// Selection counts per expert (or per memory slot, for PKM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertUsage {
    counts: Vec<u64>,
}

impl ExpertUsage {
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

/// A layer's switchable counter over its pool of experts (or memory slots).
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Counts one selection of each id, if on.
    pub fn record(&mut self, ids: &[u32]) {
        if let Some(usage) = &mut self.usage {
            usage.record(ids);
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

    #[test]
    fn a_tracker_counts_only_while_on() {
        let mut tracker = UsageTracker::new(3);
        tracker.record(&[0]);
        assert!(tracker.get().is_none());
        tracker.switch(true);
        tracker.record(&[0, 2]);
        tracker.switch(true);
        assert_eq!(tracker.get().unwrap().counts(), &[1, 0, 1]);
        tracker.reset();
        assert_eq!(tracker.get().unwrap().total(), 0);
        tracker.switch(false);
        assert!(tracker.get().is_none());
    }
}
