//! The learning-rate schedule: linear warmup, then cosine decay to a floor.
//!
//! Warmup keeps the first updates small while Adam's second-moment estimates are still noisy; the
//! cosine (Loshchilov & Hutter 2017, SGDR, without restarts) then lowers the rate smoothly to
//! `min_lr_ratio` of its peak at `total_steps`, where it stays. The schedule returns a *scale* that
//! [`super::AdamW::step`] multiplies into both the dense and the table learning rate.

use std::f64::consts::PI;

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    warmup_steps: u64,
    total_steps: u64,
    min_lr_ratio: f32,
}

impl CosineSchedule {
    /// Warmup over `warmup_steps` steps, cosine decay until `total_steps`, floor `min_lr_ratio` (in
    /// [0, 1]) of the peak rate. Errors on a floor outside [0, 1] or a warmup longer than the run.
    pub fn new(warmup_steps: u64, total_steps: u64, min_lr_ratio: f32) -> Result<Self, Error> {
        if !(0.0..=1.0).contains(&min_lr_ratio) {
            return Err(Error::Invalid(format!("schedule: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")));
        }
        if warmup_steps > total_steps {
            return Err(Error::Invalid(format!(
                "schedule: warmup_steps {warmup_steps} exceeds total_steps {total_steps}"
            )));
        }
        Ok(CosineSchedule { warmup_steps, total_steps, min_lr_ratio })
    }

    /// Scale of the peak learning rate for the step with 0-based index `step`: `(step + 1) / warmup`
    /// during warmup (so the first step is not wasted at rate 0), 1 at the end of warmup, then
    /// `min + (1 − min)·(1 + cos(π·progress))/2` with `progress` going from 0 to 1 over the remaining
    /// steps, and `min` from `total_steps` on.
    pub fn lr_scale(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return ((step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let decay_steps = self.total_steps - self.warmup_steps;
        let progress = if decay_steps == 0 { 1.0 } else { (step - self.warmup_steps) as f64 / decay_steps as f64 };
        let cosine = 0.5 * (1.0 + (PI * progress.min(1.0)).cos());
        let min = f64::from(self.min_lr_ratio);
        (min + (1.0 - min) * cosine) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_reaches_one() {
        let s = CosineSchedule::new(4, 104, 0.1).unwrap();
        assert_eq!([s.lr_scale(0), s.lr_scale(1), s.lr_scale(3)], [0.25, 0.5, 1.0]);
        assert_eq!(s.lr_scale(4), 1.0); // first decay step: progress 0
    }

    #[test]
    fn cosine_halves_midway_and_ends_at_the_floor() {
        let s = CosineSchedule::new(4, 104, 0.1).unwrap();
        assert!((s.lr_scale(54) - 0.55).abs() < 1e-6, "{}", s.lr_scale(54));
        assert!((s.lr_scale(104) - 0.1).abs() < 1e-7);
        assert!((s.lr_scale(10_000) - 0.1).abs() < 1e-7);
        let scales: Vec<f32> = (4..=104).map(|t| s.lr_scale(t)).collect();
        assert!(scales.windows(2).all(|w| w[1] <= w[0]), "decay is monotone");
    }

    #[test]
    fn degenerate_schedules() {
        let no_warmup = CosineSchedule::new(0, 10, 0.0).unwrap();
        assert_eq!(no_warmup.lr_scale(0), 1.0);
        assert_eq!(no_warmup.lr_scale(10), 0.0);
        let all_warmup = CosineSchedule::new(5, 5, 0.2).unwrap();
        assert_eq!(all_warmup.lr_scale(4), 1.0);
        assert!((all_warmup.lr_scale(5) - 0.2).abs() < 1e-7);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(CosineSchedule::new(0, 10, 1.5).unwrap_err().to_string().contains("min_lr_ratio"));
        assert!(CosineSchedule::new(0, 10, f32::NAN).is_err());
        assert!(CosineSchedule::new(11, 10, 0.1).unwrap_err().to_string().contains("warmup_steps"));
    }
}
