//! The dense feed-forward block of GPT-2: `y = GELU(x·W_in + b_in)·W_out + b_out`, the baseline every
//! sparse layer in this module is compared with at equal compute.
//!
//! Initialisation follows GPT-2: weights from N(0, 0.02²), biases zero. (GPT-2 further scales the output
//! projection of each residual branch by 1/√(2·layers); a layer does not know the depth, so the model may
//! rescale `fc_out.weight` after construction.)

use crate::error::Error;
use crate::kernels::Float;
use crate::nn::{FfwOut, Linear, Module};
use crate::ops::{self, Gelu};
use crate::param::Param;
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// GPT-2's initial weight standard deviation.
pub const GPT2_INIT_STD: f64 = 0.02;

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "io", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "io", serde(deny_unknown_fields))]
pub struct DenseFfwConfig {
    /// Width of the residual stream; a config file may leave it out (the model's `d_model` is used).
    #[cfg_attr(feature = "io", serde(default))]
    pub d_model: usize,
    /// Hidden width; GPT-2 uses 4·d_model.
    pub d_ff: usize,
}

impl DenseFfwConfig {
    pub fn validate(&self) -> Result<(), Error> {
        positive("ffw.d_model", self.d_model)?;
        positive("ffw.d_ff", self.d_ff)
    }
}

/// `Err` naming `field` unless `value` > 0 (shared by the configs of this module).
pub(crate) fn positive(field: &str, value: usize) -> Result<(), Error> {
    if value == 0 {
        return Err(Error::Invalid(format!("{field}: must be positive, got 0")));
    }
    Ok(())
}

pub struct DenseFfw<T: Float = f32> {
    /// `{name}.fc_in`: d_model → d_ff, with bias.
    pub fc_in: Linear<T>,
    /// `{name}.fc_out`: d_ff → d_model, with bias.
    pub fc_out: Linear<T>,
}

impl<T: Float> DenseFfw<T> {
    pub fn new(config: &DenseFfwConfig, name: &str, rng: &mut Rng) -> Self {
        DenseFfw {
            fc_in: Linear::new(&format!("{name}.fc_in"), config.d_model, config.d_ff, true, GPT2_INIT_STD, rng),
            fc_out: Linear::new(&format!("{name}.fc_out"), config.d_ff, config.d_model, true, GPT2_INIT_STD, rng),
        }
    }

    /// `x [tokens, d_model] → [tokens, d_model]`; no auxiliary loss. `training` changes nothing here
    /// (dropout belongs to the model), it is taken for the common layer interface.
    pub fn forward(&mut self, tape: &mut Tape<T>, x: &Var<T>, _training: bool) -> FfwOut<T> {
        FfwOut { y: self.apply(tape, x), aux_loss: None }
    }

    /// The MLP itself, also used by [`crate::nn::Moe`]'s experts (which need no `&mut`).
    pub fn apply(&self, tape: &mut Tape<T>, x: &Var<T>) -> Var<T> {
        let hidden = self.fc_in.forward(tape, x);
        let hidden = ops::gelu(tape, &hidden, Gelu::Tanh);
        self.fc_out.forward(tape, &hidden)
    }
}

impl<T: Float> Module<T> for DenseFfw<T> {
    fn params(&self) -> Vec<&Param<T>> {
        let mut params = self.fc_in.params();
        params.extend(self.fc_out.params());
        params
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut params = self.fc_in.params_mut();
        params.extend(self.fc_out.params_mut());
        params
    }
}
