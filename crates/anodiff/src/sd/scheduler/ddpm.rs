//! DDPM (Ho et al.), as diffusers' `DDPMScheduler`: ancestral sampling over the prepared timesteps,
//! with the posterior variance (`fixed_small`, Stable Diffusion's) scaled onto caller-given noise.

use super::schedule::{self, split_prediction, NoiseSchedule};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;

/// DDPM (ancestral) sampler.
pub struct DdpmScheduler {
    cfg: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

impl DdpmScheduler {
    /// A sampler for `cfg`; rejects settings DDPM does not implement.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate(super::SchedulerKind::Ddpm)?;
        let schedule = NoiseSchedule::new(cfg)?;
        // Before `set_timesteps`, diffusers walks every training timestep.
        let timesteps = (0..cfg.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            schedule,
            timesteps,
        })
    }

    /// The timestep visited after `t` (-1 after the last one).
    fn previous_timestep(&self, t: f64) -> Result<i64> {
        let i = self.timesteps.iter().position(|&v| v == t).ok_or_else(|| {
            Error::invalid(format!(
                "DDPM scheduler: timestep {t} is not in the prepared run"
            ))
        })?;
        Ok(self.timesteps.get(i + 1).map_or(-1, |&v| v as i64))
    }
}

impl Scheduler for DdpmScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let n = self.cfg.num_train_timesteps;
        schedule::check_steps(steps, n)?;
        self.timesteps =
            schedule::spaced_timesteps(self.cfg.timestep_spacing, n, steps, self.cfg.steps_offset);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn needs_noise(&self) -> bool {
        true
    }

    /// diffusers' DDPM step adds variance noise only `if t > 0`.
    fn needs_noise_at(&self, t: f64) -> bool {
        t > 0.0
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        schedule::same_shape(sample, model_output, "DDPM step: model output")?;
        let prev_t = self.previous_timestep(t)?;
        let ti = schedule::timestep_index(t, self.cfg.num_train_timesteps)?;
        let a_t = self.schedule.alpha_bar(ti)?;
        let a_prev = if prev_t >= 0 {
            self.schedule.alpha_bar(prev_t as usize)?
        } else {
            1.0
        };
        let (beta_t, beta_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;

        let mut x0 = split_prediction(self.cfg.prediction_type, model_output, sample, a_t)?.x0;
        if self.cfg.clip_sample {
            let r = self.cfg.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        // Posterior mean μ̃(x_t, x0) (DDPM eq. 7).
        let x0_coeff = a_prev.sqrt() * cur_beta / beta_t;
        let sample_coeff = cur_alpha.sqrt() * beta_prev / beta_t;
        let mut prev = (x0.affine(x0_coeff, 0.0)? + sample.affine(sample_coeff, 0.0)?)?;

        if ti > 0 {
            let noise = noise.ok_or_else(|| {
                Error::invalid(
                    "DDPM scheduler: step needs a noise tensor (needs_noise_at(t) is true)",
                )
            })?;
            schedule::same_shape(sample, noise, "DDPM step: noise")?;
            let variance = (beta_prev / beta_t * cur_beta).max(1e-20);
            let std = match self.cfg.variance_type.as_deref().unwrap_or("fixed_small") {
                "fixed_large" => cur_beta.sqrt(),
                // fixed_small and fixed_small_log (exp(½·log v)) are the same standard deviation.
                _ => variance.sqrt(),
            };
            prev = (prev + noise.affine(std, 0.0)?)?;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, t)
    }

    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    fn noise_schedule(&self) -> Result<Cow<'_, NoiseSchedule>> {
        Ok(Cow::Borrowed(&self.schedule))
    }
}
