//! A small, seedable, serialisable random number generator (SplitMix64).
//!
//! Training must be reproducible from a seed and resumable from a checkpoint, so the generator's whole
//! state is one `u64` that a checkpoint can store. It implements `rand::RngCore`, so `rand`'s samplers
//! work with it; normal deviates come from the Box–Muller transform below.

use rand::RngCore;

/// SplitMix64 (Steele, Lea and Flood 2014): a 64-bit counter passed through a strong mixing function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
    placeholder: bool,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed, placeholder: false }
    }

    /// A generator for building a model whose weights are about to be replaced (by a checkpoint's or a
    /// model file's): [`crate::Tensor::randn`] and [`crate::Tensor::uniform`] given it (or a fork of it)
    /// draw nothing and return zeros whose pages are never touched, so a million-expert table costs
    /// neither time nor memory. Drawing from it directly still works, as from `Rng::new(0)`.
    pub fn placeholder() -> Self {
        Rng { state: 0, placeholder: true }
    }

    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    /// The whole state, for checkpoints; `Rng::new(rng.state())` continues the same stream.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// An independent stream derived from this seed and a label (e.g. a layer index), so that adding
    /// a layer does not shift every other layer's initialisation.
    pub fn fork(&self, label: u64) -> Rng {
        let mut mixer = Rng::new(self.state ^ label.wrapping_mul(0xA076_1D64_78BD_642F));
        Rng { placeholder: self.placeholder, ..Rng::new(mixer.next_u64()) }
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal deviate (Box–Muller; the second deviate is discarded to keep the state one word).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1], so ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        // Lemire's multiply-shift; the bias (< n / 2^64) is irrelevant at our sizes.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_resumes_the_same_stream() {
        let mut a = Rng::new(7);
        a.next_u64();
        let mut b = Rng::new(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = Rng::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(3);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let x = rng.below(10) as usize;
            seen[x] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
