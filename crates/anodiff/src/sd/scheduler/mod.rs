//! Noise schedulers with diffusers semantics. Training uses `add_noise` / `velocity`; sampling uses
//! `set_timesteps`, `scale_model_input` and `step`. Randomness never comes from inside a scheduler:
//! a step that needs fresh noise takes it as an argument, so runs are reproducible and parity
//! fixtures can feed the exact noise PyTorch drew.

pub mod config;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};

use crate::error::Result;
use candle_core::Tensor;

pub trait Scheduler: Send {
    /// Prepares a sampling run of `steps` steps.
    fn set_timesteps(&mut self, steps: usize) -> Result<()>;
    /// The timesteps of the prepared run, in the order they are visited (floats: Euler's are not
    /// integers). These are also the values passed to the UNet.
    fn timesteps(&self) -> &[f64];
    /// Standard deviation of the initial latent noise.
    fn init_noise_sigma(&self) -> f64;
    /// Input scaling some schedulers (Euler) apply before the UNet.
    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor>;
    /// One reverse step from `t`: returns the previous sample. `noise` must be given (same shape as
    /// `sample`) when `needs_noise()` is true, and is ignored otherwise.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Whether `step` consumes fresh noise (DDPM; DDIM with eta > 0).
    fn needs_noise(&self) -> bool {
        false
    }
    /// Forward process q(x_t | x_0) with the training schedule; `t` holds one timestep per row.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor>;
    fn config(&self) -> &SchedulerConfig;
}

/// The schedulers anodiff ships, by the names used on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    Pndm,
    Euler,
}

impl std::str::FromStr for SchedulerKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            "pndm" | "plms" => Ok(Self::Pndm),
            "euler" => Ok(Self::Euler),
            _ => Err(crate::Error::invalid(format!(
                "unknown scheduler `{s}` (expected ddpm, ddim, pndm or euler)"
            ))),
        }
    }
}
