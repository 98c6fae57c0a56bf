//! Noise schedulers with diffusers semantics. Training uses `add_noise` / `velocity`; sampling uses
//! `set_timesteps`, `scale_model_input` and `step`. Randomness never comes from inside a scheduler:
//! a step that needs fresh noise takes it as an argument, so runs are reproducible and parity
//! fixtures can feed the exact noise PyTorch drew.

pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod euler;
pub mod pndm;
pub mod schedule;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use euler::EulerScheduler;
pub use pndm::PndmScheduler;
pub use schedule::{NoiseSchedule, Prediction};

use crate::error::Result;
use candle_core::Tensor;
use std::borrow::Cow;

/// A diffusers-compatible sampler: prepares a run's timesteps, then steps the sample back one
/// timestep at a time. Defaults implement the training-side helpers from [`NoiseSchedule`].
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
    /// `sample`) when `needs_noise_at(t)` is true, and is ignored otherwise.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Declares that the run starts at position `index` of `timesteps()` (partial denoising), as
    /// diffusers' img2img and inpainting pipelines do right after `set_timesteps`. Schedulers that
    /// locate a step by its position (Euler) start there instead of searching for the timestep;
    /// the others need nothing. `index` must be a position of the prepared run.
    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        schedule::check_begin_index(index, self.timesteps().len())
    }
    /// Whether `step` consumes fresh noise (DDPM; DDIM with eta > 0).
    fn needs_noise(&self) -> bool {
        false
    }
    /// Whether `step` at timestep `t` consumes fresh noise, so a caller draws noise exactly when
    /// diffusers does (DDPM skips it at t = 0).
    fn needs_noise_at(&self, t: f64) -> bool {
        let _ = t;
        self.needs_noise()
    }
    /// Forward process q(x_t | x_0) with the training schedule; `t` holds one timestep per row.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor>;
    /// The config the scheduler was built from.
    fn config(&self) -> &SchedulerConfig;

    /// The training noise schedule (betas, ᾱ). Implementations return their cached copy.
    fn noise_schedule(&self) -> Result<Cow<'_, NoiseSchedule>> {
        Ok(Cow::Owned(NoiseSchedule::new(self.config())?))
    }
    /// The v-prediction target for (x0, noise, t), one training timestep per row (diffusers'
    /// `get_velocity`).
    fn velocity(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.noise_schedule()?.velocity(original, noise, t)
    }
    /// The training target for the configured `prediction_type`: ε, v or x0.
    fn training_target(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.noise_schedule()?
            .training_target(self.config().prediction_type, original, noise, t)
    }
    /// Splits a model output into (x0, ε) estimates for the configured `prediction_type`.
    /// `sample` is the UNet input (after `scale_model_input`), i.e. in the DDPM parameterisation
    /// `sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε`; `t` is a timestep of the run.
    fn predict(&self, model_output: &Tensor, sample: &Tensor, t: f64) -> Result<Prediction> {
        let s = self.noise_schedule()?;
        let ti = schedule::timestep_index(t, s.num_train_timesteps())?;
        s.predict(self.config().prediction_type, model_output, sample, ti)
    }
    /// Noises clean samples to timesteps of the prepared run in this scheduler's own sample space,
    /// one timestep per row (img2img-style starts). DDPM-space `add_noise` for every scheduler but
    /// Euler, whose samples live in sigma space (`x0 + σ·noise`).
    fn add_noise_at(&self, original: &Tensor, noise: &Tensor, t: &[f64]) -> Result<Tensor> {
        let n = self.config().num_train_timesteps;
        let t = t
            .iter()
            .map(|&v| schedule::timestep_index(v, n))
            .collect::<Result<Vec<_>>>()?;
        self.add_noise(original, noise, &t)
    }
}

/// The schedulers anodiff ships, by the names used on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// `DDPMScheduler`.
    Ddpm,
    /// `DDIMScheduler`.
    Ddim,
    /// `PNDMScheduler` (PLMS).
    Pndm,
    /// `EulerDiscreteScheduler`.
    Euler,
}

impl SchedulerKind {
    /// The kind for a diffusers `_class_name`, if anodiff implements that class.
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "DDPMScheduler" => Some(Self::Ddpm),
            "DDIMScheduler" => Some(Self::Ddim),
            "PNDMScheduler" => Some(Self::Pndm),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            _ => None,
        }
    }

    /// The diffusers class implementing this scheduler (`_class_name` in its config).
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Ddpm => "DDPMScheduler",
            Self::Ddim => "DDIMScheduler",
            Self::Pndm => "PNDMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
        }
    }
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

/// Builds a scheduler of `kind` from a diffusers config, rejecting configs it cannot follow
/// exactly (see [`SchedulerConfig::validate`]). `eta` is DDIM's noise blend (0 = deterministic) and
/// replaces `cfg.eta`; any other kind takes no eta, so a non-zero value there is an error rather than
/// being silently ignored.
pub fn make_scheduler(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    eta: f64,
) -> Result<Box<dyn Scheduler>> {
    if kind != SchedulerKind::Ddim && eta != 0.0 {
        return Err(crate::Error::invalid(format!(
            "{kind:?} scheduler: eta = {eta} is only meaningful for DDIM (use 0)"
        )));
    }
    let cfg = SchedulerConfig { eta, ..cfg.clone() };
    cfg.validate(kind)?;
    Ok(match kind {
        SchedulerKind::Ddpm => Box::new(DdpmScheduler::new(&cfg)?),
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(&cfg)?),
        SchedulerKind::Pndm => Box::new(PndmScheduler::new(&cfg)?),
        SchedulerKind::Euler => Box::new(EulerScheduler::new(&cfg)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scheduler_name_is_an_error() {
        let e = "lms".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(e.contains("unknown scheduler `lms`"), "{e}");
        assert_eq!(
            "PLMS".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::Pndm
        );
    }

    #[test]
    fn prk_mode_is_refused() {
        let cfg = SchedulerConfig {
            skip_prk_steps: false,
            ..Default::default()
        };
        let e = make_scheduler(SchedulerKind::Pndm, &cfg, 0.0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("PRK steps not supported"), "{e}");
    }

    #[test]
    fn eta_is_only_for_ddim() {
        let cfg = SchedulerConfig::default();
        let e = make_scheduler(SchedulerKind::Euler, &cfg, 0.5)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only meaningful for DDIM"), "{e}");
        let e = make_scheduler(SchedulerKind::Ddim, &cfg, -1.0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("eta must be >= 0"), "{e}");
        let s = make_scheduler(SchedulerKind::Ddim, &cfg, 0.5).unwrap();
        assert!(s.needs_noise() && s.needs_noise_at(1.0));
        let s = make_scheduler(SchedulerKind::Ddim, &cfg, 0.0).unwrap();
        assert!(!s.needs_noise_at(1.0));
    }

    #[test]
    fn ddpm_draws_noise_only_above_t0() {
        let s = make_scheduler(SchedulerKind::Ddpm, &SchedulerConfig::default(), 0.0).unwrap();
        assert!(s.needs_noise_at(1.0) && !s.needs_noise_at(0.0));
    }
}
