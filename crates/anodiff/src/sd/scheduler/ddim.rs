//! DDIM (Song et al.), as diffusers' `DDIMScheduler`. `eta` (a config option here, a `step`
//! argument in diffusers) blends in the ancestral noise: 0 is deterministic, 1 is DDPM-like.

use super::schedule::{self, split_prediction, NoiseSchedule};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;

/// DDIM sampler.
pub struct DdimScheduler {
    cfg: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// `num_train_timesteps / steps`: diffusers' distance to the previous timestep, whatever the
    /// spacing.
    step_ratio: i64,
    /// ᾱ used past the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    final_alpha_bar: f64,
}

impl DdimScheduler {
    /// A sampler for `cfg`; rejects settings DDIM does not implement.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate(super::SchedulerKind::Ddim)?;
        let schedule = NoiseSchedule::new(cfg)?;
        let final_alpha_bar = schedule.final_alpha_bar(cfg.set_alpha_to_one)?;
        Ok(Self {
            cfg: cfg.clone(),
            schedule,
            timesteps: Vec::new(),
            step_ratio: 0,
            final_alpha_bar,
        })
    }

    /// The configured eta.
    pub fn eta(&self) -> f64 {
        self.cfg.eta
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let n = self.cfg.num_train_timesteps;
        schedule::check_steps(steps, n)?;
        self.timesteps =
            schedule::spaced_timesteps(self.cfg.timestep_spacing, n, steps, self.cfg.steps_offset);
        self.step_ratio = (n / steps) as i64;
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
        self.cfg.eta > 0.0
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.step_ratio == 0 {
            return Err(Error::invalid(
                "DDIM scheduler: call set_timesteps before step",
            ));
        }
        schedule::same_shape(sample, model_output, "DDIM step: model output")?;
        let ti = schedule::timestep_index(t, self.cfg.num_train_timesteps)?;
        let prev_t = ti as i64 - self.step_ratio;
        let a_t = self.schedule.alpha_bar(ti)?;
        let a_prev = if prev_t >= 0 {
            self.schedule.alpha_bar(prev_t as usize)?
        } else {
            self.final_alpha_bar
        };
        let beta_t = 1.0 - a_t;

        let p = split_prediction(self.cfg.prediction_type, model_output, sample, a_t)?;
        let mut x0 = p.x0;
        if self.cfg.clip_sample {
            let r = self.cfg.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        // σ_t = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev))  (DDIM eq. 16)
        let variance = (1.0 - a_prev) / beta_t * (1.0 - a_t / a_prev);
        let std = self.cfg.eta * variance.sqrt();
        // Direction pointing to x_t; clamped at 0 so eta > 1 cannot produce NaN.
        let dir_coeff = (1.0 - a_prev - std * std).max(0.0).sqrt();
        let mut prev = (x0.affine(a_prev.sqrt(), 0.0)? + p.eps.affine(dir_coeff, 0.0)?)?;
        if self.cfg.eta > 0.0 {
            let noise = noise.ok_or_else(|| {
                Error::invalid("DDIM scheduler: eta > 0 needs a noise tensor for every step")
            })?;
            schedule::same_shape(sample, noise, "DDIM step: noise")?;
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
