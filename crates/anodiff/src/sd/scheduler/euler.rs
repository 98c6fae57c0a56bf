//! Euler discrete (Karras et al. Algorithm 2), as diffusers' `EulerDiscreteScheduler`. Samples live
//! in sigma space, `x = x0 + σ·ε` with `σ = sqrt((1-ᾱ)/ᾱ)`; the UNet sees `x / sqrt(σ²+1)`.
//! Inference sigmas are the training sigmas linearly interpolated at (possibly fractional)
//! timesteps. diffusers holds sigmas and timesteps as f32 and does the per-step scalar arithmetic
//! on f32 0-dim tensors; the same f32 operations are used here so the two agree to the last bit
//! where possible.

use super::schedule::{self, div_scalar, NoiseSchedule, Prediction};
use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;

/// Euler discrete sampler.
pub struct EulerScheduler {
    cfg: SchedulerConfig,
    schedule: NoiseSchedule,
    /// Training sigmas, index = training timestep (ascending).
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// One per timestep plus the final sigma.
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    /// Where the run starts when the caller said so (`set_begin_index`); else the first step is
    /// found by its timestep.
    begin_index: Option<usize>,
}

impl EulerScheduler {
    /// A sampler for `cfg`; rejects settings Euler does not implement.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate(super::SchedulerKind::Euler)?;
        let schedule = NoiseSchedule::new(cfg)?;
        let train_sigmas: Vec<f32> = schedule
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1f32 - a) / a).sqrt())
            .collect();
        // Before `set_timesteps`: every training timestep, descending, then sigma 0.
        let n = cfg.num_train_timesteps;
        let timesteps = (0..n).rev().map(|t| t as f32 as f64).collect();
        let mut sigmas: Vec<f32> = train_sigmas.iter().rev().copied().collect();
        sigmas.push(0.0);
        Ok(Self {
            cfg: cfg.clone(),
            schedule,
            train_sigmas,
            timesteps,
            sigmas,
            step_index: None,
            begin_index: None,
        })
    }

    /// The sigmas of the prepared run (one per timestep, then the final one).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Position of `t` in the run; with a repeated timestep diffusers takes the second occurrence.
    fn index_for_timestep(&self, t: f64) -> Result<usize> {
        let hits: Vec<usize> = (0..self.timesteps.len())
            .filter(|&i| self.timesteps[i] == t)
            .collect();
        match hits.len() {
            0 => Err(Error::invalid(format!(
                "Euler scheduler: timestep {t} is not in the prepared run"
            ))),
            1 => Ok(hits[0]),
            _ => Ok(hits[1]),
        }
    }

    fn current_index(&self, t: f64) -> Result<usize> {
        match (self.step_index, self.begin_index) {
            (Some(i), _) | (None, Some(i)) => Ok(i),
            (None, None) => self.index_for_timestep(t),
        }
    }

    /// numpy.interp of the training sigmas at a (fractional) timestep, in f64.
    fn interp_sigma(&self, t: f64) -> f64 {
        let s = &self.train_sigmas;
        let last = s.len() - 1;
        if t <= 0.0 {
            return s[0] as f64;
        }
        if t >= last as f64 {
            return s[last] as f64;
        }
        let j = t.floor() as usize;
        if j as f64 == t {
            return s[j] as f64;
        }
        let slope = s[j + 1] as f64 - s[j] as f64;
        slope * (t - j as f64) + s[j] as f64
    }
}

impl Scheduler for EulerScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let n = self.cfg.num_train_timesteps;
        schedule::check_steps(steps, n)?;
        let ts: Vec<f32> = match self.cfg.timestep_spacing {
            // np.linspace(0, n-1, steps, dtype=float32): f64 values cast to f32, not rounded.
            TimestepSpacing::Linspace => schedule::np_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|t| t as f32)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio) as f32 + self.cfg.steps_offset as f32)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                schedule::np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                    .into_iter()
                    .map(|t| t.round_ties_even() as f32 - 1.0)
                    .collect()
            }
        };
        let mut sigmas: Vec<f32> = ts
            .iter()
            .map(|&t| self.interp_sigma(t as f64) as f32)
            .collect();
        sigmas.push(match self.cfg.final_sigmas_type.as_str() {
            "sigma_min" => self.train_sigmas[0],
            _ => 0.0,
        });
        self.timesteps = ts.into_iter().map(|t| t as f64).collect();
        self.sigmas = sigmas;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn set_begin_index(&mut self, index: usize) -> Result<()> {
        schedule::check_begin_index(index, self.timesteps.len())?;
        self.begin_index = Some(index);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self
            .sigmas
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        match self.cfg.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
        }
    }

    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let sigma = self.sigmas[self.current_index(t)?];
        Ok(div_scalar(sample, (sigma * sigma + 1.0).sqrt() as f64)?)
    }

    fn needs_noise(&self) -> bool {
        self.cfg.s_churn > 0.0
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        schedule::same_shape(sample, model_output, "Euler step: model output")?;
        let i = self.current_index(t)?;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::invalid(
                "Euler scheduler: stepped past the end of the run",
            ));
        }
        let sigma = self.sigmas[i];
        let c = &self.cfg;
        let gamma = if (c.s_tmin..=c.s_tmax).contains(&(sigma as f64)) {
            (c.s_churn / (self.sigmas.len() - 1) as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0) as f32;
        let mut sample = sample.clone();
        if gamma > 0.0 {
            let noise = noise.ok_or_else(|| {
                Error::invalid("Euler scheduler: s_churn > 0 needs a noise tensor for every step")
            })?;
            schedule::same_shape(&sample, noise, "Euler step: noise")?;
            let churn = (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            sample = (sample + noise.affine(c.s_noise, 0.0)?.affine(churn as f64, 0.0)?)?;
        }
        let x0 = match c.prediction_type {
            PredictionType::Epsilon => (&sample - model_output.affine(sigma_hat as f64, 0.0)?)?,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                let c_out = -sigma / s2.sqrt();
                (model_output.affine(c_out as f64, 0.0)? + div_scalar(&sample, s2 as f64)?)?
            }
            PredictionType::Sample => model_output.clone(),
        };
        let derivative = div_scalar(&(&sample - x0)?, sigma_hat as f64)?;
        let dt = self.sigmas[i + 1] - sigma_hat;
        let prev = (sample + derivative.affine(dt as f64, 0.0)?)?;
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, t)
    }

    /// Sigma space: `x0 + σ_t·noise` at timesteps of the prepared run (diffusers' Euler `add_noise`).
    fn add_noise_at(&self, original: &Tensor, noise: &Tensor, t: &[f64]) -> Result<Tensor> {
        schedule::same_shape(original, noise, "add_noise: noise")?;
        let b = original.dim(0)?;
        if t.len() != b {
            return Err(Error::invalid(format!(
                "Euler add_noise: {} timesteps for a batch of {b}",
                t.len()
            )));
        }
        let sig = t
            .iter()
            .map(|&v| Ok(self.sigmas[self.index_for_timestep(v)?]))
            .collect::<Result<Vec<f32>>>()?;
        let mut shape = vec![b];
        shape.resize(original.rank(), 1);
        let sig = Tensor::from_vec(sig, shape, original.device())?.to_dtype(original.dtype())?;
        Ok((original + noise.broadcast_mul(&sig)?)?)
    }

    /// (x0, ε) from the scaled model input: ᾱ follows from the step's sigma, `ᾱ = 1/(σ²+1)`, so
    /// fractional timesteps work too.
    fn predict(&self, model_output: &Tensor, sample: &Tensor, t: f64) -> Result<Prediction> {
        schedule::same_shape(sample, model_output, "model output")?;
        let sigma = self.sigmas[self.index_for_timestep(t)?] as f64;
        let a = 1.0 / (sigma * sigma + 1.0);
        Ok(schedule::split_prediction(
            self.cfg.prediction_type,
            model_output,
            sample,
            a,
        )?)
    }

    fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    fn noise_schedule(&self) -> Result<Cow<'_, NoiseSchedule>> {
        Ok(Cow::Borrowed(&self.schedule))
    }
}
