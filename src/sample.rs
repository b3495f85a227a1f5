//! Sampling text from a trained model, one token at a time, with a key/value cache.
//!
//! The prompt is run through the model once, filling each block's [`KvCache`]; every new token then costs
//! one position of attention against the cache, O(context), instead of a forward pass over the whole
//! prefix. Learned positions stop at `seq_len`: when the cache is full, the context is cut to its last half
//! and re-encoded, so generation can go on for any length.

use crate::kernels::Float;
use crate::model::Gpt;
use crate::nn::attention::KvCache;
use crate::rng::Rng;
use crate::tape::Tape;

#[derive(Clone, Debug)]
pub struct SampleConfig {
    /// Tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time.
    pub temperature: f64,
    /// Sample only among the k most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    pub seed: u64,
    /// Stop early at this token (the end-of-text token).
    pub stop_token: Option<u32>,
}

/// Continues `prompt` (non-empty) and returns the new tokens; `on_token` sees each as it is drawn.
pub fn generate<T: Float>(
    model: &mut Gpt<T>,
    prompt: &[u32],
    config: &SampleConfig,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generate: the prompt must hold at least one token");
    let seq_len = model.config().seq_len;
    let mut rng = Rng::new(config.seed);
    let mut context: Vec<u32> = prompt[prompt.len().saturating_sub(seq_len)..].to_vec();
    let mut caches = model.new_caches();
    let mut logits = feed(model, &context, &mut caches);
    let mut generated = Vec::with_capacity(config.max_new_tokens);
    for _ in 0..config.max_new_tokens {
        let token = pick(&logits, config, &mut rng);
        on_token(token);
        generated.push(token);
        if Some(token) == config.stop_token {
            break;
        }
        context.push(token);
        if caches[0].len() == seq_len {
            // The position table is exhausted: keep the most recent half of the context (at least the
            // newest token, which a model of one position would otherwise drop, leaving nothing to feed).
            context.drain(..context.len() - (seq_len / 2).max(1));
            caches = model.new_caches();
            logits = feed(model, &context, &mut caches);
        } else {
            logits = feed(model, &[token], &mut caches);
        }
    }
    generated
}

/// Runs `tokens` through the model after the cached ones; returns the last position's logits.
fn feed<T: Float>(model: &mut Gpt<T>, tokens: &[u32], caches: &mut [KvCache<T>]) -> Vec<f64> {
    let mut tape = Tape::no_grad();
    let logits = model.forward_cached(&mut tape, tokens, caches);
    let vocab = logits.value().last_dim();
    logits.value().data()[logits.value().numel() - vocab..].iter().map(|x| x.to_f64()).collect()
}

/// Draws a token from `logits` with temperature and top-k filtering.
fn pick(logits: &[f64], config: &SampleConfig, rng: &mut Rng) -> u32 {
    let argmax = || (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32;
    if config.temperature <= 0.0 {
        return argmax();
    }
    let mut candidates: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = config.top_k.filter(|&k| k > 0 && k < logits.len()) {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        candidates.truncate(k);
        candidates.sort_unstable();
    }
    let max = candidates.iter().map(|&i| logits[i]).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = candidates.iter().map(|&i| ((logits[i] - max) / config.temperature).exp()).collect();
    let mut target = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, w) in candidates.iter().zip(&weights) {
        target -= w;
        if target < 0.0 {
            return i as u32;
        }
    }
    *candidates.last().unwrap() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f64, top_k: Option<usize>) -> SampleConfig {
        SampleConfig { max_new_tokens: 1, temperature, top_k, seed: 0, stop_token: None }
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(pick(&logits, &config(0.0, None), &mut Rng::new(1)), 1);
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let logits = [0.0, 5.0, 4.9, -3.0, 4.8];
        let mut rng = Rng::new(2);
        for _ in 0..500 {
            let t = pick(&logits, &config(10.0, Some(2)), &mut rng);
            assert!(t == 1 || t == 2, "drew {t}");
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let logits = [0.0, (3.0f64).ln()]; // probabilities 1/4 and 3/4
        let mut rng = Rng::new(3);
        let ones = (0..20_000).filter(|_| pick(&logits, &config(1.0, None), &mut rng) == 1).count();
        let share = ones as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.015, "share {share}");
    }
}
