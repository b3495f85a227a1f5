//! AdamW: Adam (Kingma & Ba 2015, Algorithm 1) with decoupled weight decay (Loshchilov & Hutter 2019,
//! Algorithm 2), in the form PyTorch's `torch.optim.AdamW` computes it.
//!
//! For a parameter `p` with gradient `g` at step `t` (counted from 1), learning rate `lr` (the configured
//! rate times the schedule's scale) and decay `λ`:
//!
//! ```text
//! m ← β₁·m + (1 − β₁)·g                       first moment (running mean of g)
//! v ← β₂·v + (1 − β₂)·g²                      second moment (running mean of g²)
//! p ← p·(1 − lr·λ)                            decoupled weight decay: not part of the gradient
//! p ← p − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)   bias-corrected Adam step
//! ```
//!
//! The two bias corrections undo the zero initialisation of `m` and `v` (Kingma & Ba, section 3).
//! Decay is decoupled (Loshchilov & Hutter): it shrinks the weight directly instead of being added to
//! `g`, where Adam's per-coordinate scaling would weaken it exactly for the coordinates with large
//! gradients.
//!
//! Parameter groups follow [`ParamKind`]:
//! - `Weight` (matrices): learning rate `lr`, weight decay `weight_decay`;
//! - `NoDecay` (norm gains, biases): learning rate `lr`, no decay;
//! - `Table` (PEER expert tables, PKM values): learning rate `table_lr`, **no decay**. Lample et al.
//!   (2019, PKM) train memory values without weight decay, and with lazy updates decay could only reach
//!   the rows a step reads, so a row's decay would depend on how often it is retrieved.
//!
//! Moments are kept per parameter **name** (names are stable across runs, parameter ids are not), so a
//! checkpoint can store them as tensors ([`AdamW::state_tensors`]) and restore them
//! ([`AdamW::load_state`]). They are allocated on a parameter's first update, as zeros from
//! `alloc_zeroed`: for a million-row table the pages of rows never touched cost no memory.
//!
//! A dense gradient is applied in one fused pass (m, v and p per element, chunks over rayon). A
//! row-sparse gradient is applied lazily to the rows it touches only: see [`super::sparse_adam`].
//! Parameters without a gradient on the tape are skipped entirely (no moment decay, no weight decay),
//! as in PyTorch.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::kernels::parallel::prelude::*;

use super::sparse_adam::update_rows;
use crate::grad::Grad;
use crate::param::{Param, ParamKind};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Elements per rayon task in the dense update: 64 KiB of each of p, m, v and g, large enough that task
/// overhead vanishes, small enough that two threads share a big tensor evenly. Each element's update
/// is independent of the others, so the split never changes the result.
const CHUNK: usize = 1 << 14;

/// Name prefixes of the moment tensors in [`AdamW::state_tensors`].
const FIRST_MOMENT_PREFIX: &str = "optim.m.";
const SECOND_MOMENT_PREFIX: &str = "optim.v.";

/// Hyper-parameters of [`AdamW`]. `lr` and `table_lr` are peak rates, multiplied by the schedule's
/// `lr_scale` at every step.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate of `Weight` and `NoDecay` parameters.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Added to `√v̂` so that coordinates with a vanishing second moment do not divide by zero.
    pub eps: f32,
    /// Decoupled weight decay `λ`, applied to `Weight` parameters only.
    pub weight_decay: f32,
    /// Learning rate of `Table` parameters (expert and value tables).
    pub table_lr: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's `AdamW` defaults, with the table rate equal to the dense one.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, table_lr: 1e-3 }
    }
}

/// Adam's running moments of one parameter, each shaped like it.
#[derive(Clone, Debug)]
struct Moments {
    m: Tensor<f32>,
    v: Tensor<f32>,
}

impl Moments {
    fn zeros(shape: &[usize]) -> Self {
        // Large moments land on huge pages (kernels/memory.rs): the lazy update reads random rows of them.
        Moments { m: Tensor::zeros(shape), v: Tensor::zeros(shape) }
    }
}

/// The AdamW optimizer: configuration, moments keyed by parameter name, and the global step count.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    state: BTreeMap<String, Moments>,
    step: u64,
}

/// The constants of one parameter's update at one step, computed in f64 and rounded once to f32.
#[derive(Clone, Copy, Debug)]
pub(super) struct AdamCoefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    inv_sqrt_bias2: f32,
    eps: f32,
    /// `1 − lr·λ`, or 1 for parameters without decay.
    decay: f32,
    /// The gradient-clipping factor (`super::clip::clip_factor`), applied to g as it is read.
    grad_scale: f32,
}

impl AdamCoefficients {
    fn new(config: &AdamWConfig, kind: ParamKind, step: u64, lr_scale: f32, grad_scale: f32) -> Self {
        let (beta1, beta2) = (f64::from(config.beta1), f64::from(config.beta2));
        let base_lr = if kind == ParamKind::Table { config.table_lr } else { config.lr };
        let lr = f64::from(base_lr) * f64::from(lr_scale);
        let weight_decay = if kind == ParamKind::Weight { f64::from(config.weight_decay) } else { 0.0 };
        let t = step as f64;
        AdamCoefficients {
            beta1: config.beta1,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: config.beta2,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / (1.0 - beta1.powf(t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - beta2.powf(t)).sqrt()) as f32,
            eps: config.eps,
            decay: (1.0 - lr * weight_decay) as f32,
            grad_scale,
        }
    }
}

/// The fused AdamW update of a run of elements: reads and writes each of p, m, v once. Plain indexed
/// arithmetic (no `mul_add`: Rust never contracts `a*b + c`), which the compiler vectorises, so every
/// caller (dense chunks, sparse rows) computes bit-identical results for the same inputs. The gradient
/// is clipped as it is read: `g·grad_scale` is the same f32 product a rescaling pass would have stored.
#[inline]
pub(super) fn adam_update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &AdamCoefficients) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let g = g[i] * c.grad_scale;
        m[i] = c.beta1 * m[i] + c.one_minus_beta1 * g;
        v[i] = c.beta2 * v[i] + c.one_minus_beta2 * (g * g);
        let denom = v[i].sqrt() * c.inv_sqrt_bias2 + c.eps;
        p[i] = p[i] * c.decay - c.step_size * (m[i] / denom);
    }
}

/// A dense gradient: the fused update over fixed-size chunks in parallel.
fn update_dense(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &AdamCoefficients) {
    if p.len() <= CHUNK {
        adam_update(p, m, v, g, c);
        return;
    }
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| adam_update(p, m, v, g, c));
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, state: BTreeMap::new(), step: 0 }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken so far: the `t` of the last update's bias correction.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The first and second moments of the parameter called `name`, once it has been updated.
    pub fn moments(&self, name: &str) -> Option<(&Tensor<f32>, &Tensor<f32>)> {
        self.state.get(name).map(|s| (&s.m, &s.v))
    }

    /// One AdamW step on every parameter that has a gradient on `tape`, with learning rates scaled by
    /// `lr_scale` (from [`super::CosineSchedule::lr_scale`]) and every gradient multiplied by
    /// `grad_scale` (the clipping factor from [`super::clip_factor`], 1 for none). The step count
    /// advances once per call, and all parameters share it in their bias correction.
    ///
    /// Panics (engine bugs, not user input) if two parameters share a name, if a gradient or stored
    /// moment does not have its parameter's shape, or if a row-sparse gradient names a row outside its
    /// table.
    pub fn step(&mut self, params: &mut [&mut Param], tape: &Tape, lr_scale: f32, grad_scale: f32) {
        assert_unique_names(params.iter().map(|p| p.name.as_str()));
        self.step += 1;
        for param in params.iter_mut() {
            let param: &mut Param = param;
            let Some(grad) = tape.grad(param) else { continue };
            let shape = param.value.shape().to_vec();
            assert_eq!(grad.shape(), &shape[..], "AdamW: gradient of {:?} has the wrong shape", param.name);
            let coefficients = AdamCoefficients::new(&self.config, param.kind, self.step, lr_scale, grad_scale);
            let moments = self.state.entry(param.name.clone()).or_insert_with(|| Moments::zeros(&shape));
            assert_eq!(moments.m.shape(), &shape[..], "AdamW: stored moments of {:?} have the wrong shape", param.name);
            let (m, v) = (moments.m.data_mut(), moments.v.data_mut());
            let p = param.value.data_mut();
            match grad {
                Grad::Dense(g) => update_dense(p, m, v, g.data(), &coefficients),
                Grad::Rows(rows) => update_rows(p, m, v, rows, &coefficients),
            }
        }
    }

    /// The moments as named tensors, `optim.m.<param name>` and `optim.v.<param name>`, for a
    /// checkpoint. The tensors share the optimizer's buffers (no copy); the step count is
    /// [`AdamW::step_count`], which the checkpoint stores in its metadata.
    pub fn state_tensors(&self) -> Vec<(String, Tensor<f32>)> {
        let mut tensors = Vec::with_capacity(2 * self.state.len());
        for (name, moments) in &self.state {
            tensors.push((format!("{FIRST_MOMENT_PREFIX}{name}"), moments.m.clone()));
            tensors.push((format!("{SECOND_MOMENT_PREFIX}{name}"), moments.v.clone()));
        }
        tensors
    }

    /// Replaces the state with `step` and the moments among `tensors` (names starting with `optim.`;
    /// other tensors, such as the weights of the same checkpoint, are ignored). Every moment must
    /// belong to one of `params` and have its shape, and every `m` needs its `v`.
    pub fn load_state(&mut self, step: u64, tensors: &[(String, Tensor<f32>)], params: &[&Param]) -> Result<(), Error> {
        let mut first: BTreeMap<&str, &Tensor<f32>> = BTreeMap::new();
        let mut second: BTreeMap<&str, &Tensor<f32>> = BTreeMap::new();
        for (name, tensor) in tensors.iter().filter(|(name, _)| name.starts_with("optim.")) {
            let (param_name, side) = if let Some(rest) = name.strip_prefix(FIRST_MOMENT_PREFIX) {
                (rest, &mut first)
            } else if let Some(rest) = name.strip_prefix(SECOND_MOMENT_PREFIX) {
                (rest, &mut second)
            } else {
                return Err(Error::OptimizerState(format!("unknown optimizer tensor {name:?}")));
            };
            let param = params.iter().find(|p| p.name == param_name).ok_or_else(|| {
                Error::OptimizerState(format!("tensor {name:?} belongs to no parameter of the model"))
            })?;
            if tensor.shape() != param.value.shape() {
                return Err(Error::OptimizerState(format!(
                    "tensor {name:?} has shape {:?}, parameter {param_name:?} has shape {:?}",
                    tensor.shape(),
                    param.value.shape()
                )));
            }
            side.insert(param_name, tensor);
        }
        let mut state = BTreeMap::new();
        for (&name, &m) in &first {
            let v = second.remove(name).ok_or_else(|| {
                Error::OptimizerState(format!("{FIRST_MOMENT_PREFIX}{name} has no {SECOND_MOMENT_PREFIX}{name}"))
            })?;
            state.insert(name.to_string(), Moments { m: m.clone(), v: v.clone() });
        }
        if let Some(name) = second.keys().next() {
            return Err(Error::OptimizerState(format!(
                "{SECOND_MOMENT_PREFIX}{name} has no {FIRST_MOMENT_PREFIX}{name}"
            )));
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

fn assert_unique_names<'a>(names: impl Iterator<Item = &'a str>) {
    let mut sorted: Vec<&str> = names.collect();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        panic!("AdamW: two parameters are named {:?}; moments are keyed by name", pair[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_coordinate_by_about_lr() {
        // At t = 1 the bias-corrected step is lr·g/(|g| + ε'): a sign step of size lr (Kingma & Ba, §2).
        let config = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
        let c = AdamCoefficients::new(&config, ParamKind::Weight, 1, 1.0, 1.0);
        let (mut p, mut m, mut v) = (vec![1.0f32, 1.0], vec![0.0; 2], vec![0.0; 2]);
        adam_update(&mut p, &mut m, &mut v, &[0.5, -2.0], &c);
        assert!((p[0] - (1.0 - 1e-3)).abs() < 1e-6 && (p[1] - (1.0 + 1e-3)).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn groups_get_their_rate_and_decay() {
        let config = AdamWConfig { lr: 0.1, table_lr: 0.5, weight_decay: 0.2, ..AdamWConfig::default() };
        let weight = AdamCoefficients::new(&config, ParamKind::Weight, 1, 0.5, 1.0);
        let no_decay = AdamCoefficients::new(&config, ParamKind::NoDecay, 1, 0.5, 1.0);
        let table = AdamCoefficients::new(&config, ParamKind::Table, 1, 0.5, 1.0);
        assert!((weight.decay - (1.0 - 0.05 * 0.2)).abs() < 1e-7);
        assert_eq!((no_decay.decay, table.decay), (1.0, 1.0));
        assert!((table.step_size - 0.25 / 0.1).abs() < 1e-5, "{}", table.step_size);
    }

    #[test]
    #[should_panic(expected = "two parameters are named \"w\"")]
    fn duplicate_names_are_refused() {
        assert_unique_names(["w", "b", "w"].into_iter());
    }
}
