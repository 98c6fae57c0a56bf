//! PNDM in PLMS mode (`skip_prk_steps = true`, Stable Diffusion 1.x's default), as diffusers'
//! `PNDMScheduler`. A linear multistep method over ε: it keeps the last four model outputs. Its
//! first step has no history, so diffusers runs the first timestep twice (the timesteps list holds
//! a duplicate): step 0 takes a plain step to look ahead, step 1 restarts from the same sample with
//! the mean of both outputs (a Heun-like start), and later steps use 2-, 3- then 4-term
//! Adams–Bashforth combinations.

use super::schedule::{self, div_scalar, NoiseSchedule};
use super::{PredictionType, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;

/// PNDM sampler in PLMS mode.
pub struct PndmScheduler {
    cfg: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    step_ratio: i64,
    final_alpha_bar: f64,
    /// Past model outputs (at most 4 kept).
    ets: Vec<Tensor>,
    /// The sample of the first step, reused by the repeated second step.
    cur_sample: Option<Tensor>,
    counter: usize,
}

impl PndmScheduler {
    /// A sampler for `cfg`; rejects settings PNDM does not implement.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate(super::SchedulerKind::Pndm)?;
        let schedule = NoiseSchedule::new(cfg)?;
        let final_alpha_bar = schedule.final_alpha_bar(cfg.set_alpha_to_one)?;
        Ok(Self {
            cfg: cfg.clone(),
            schedule,
            timesteps: Vec::new(),
            step_ratio: 0,
            final_alpha_bar,
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        })
    }

    fn alpha_bar_or_final(&self, t: i64) -> Result<f64> {
        if t >= 0 {
            self.schedule.alpha_bar(t as usize)
        } else {
            Ok(self.final_alpha_bar)
        }
    }

    /// x_{t_prev} from x_t and an ε estimate (PNDM eq. 9, diffusers' `_get_prev_sample`).
    fn prev_sample(
        &self,
        sample: &Tensor,
        t: i64,
        prev_t: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        if t < 0 {
            return Err(Error::invalid(format!(
                "PNDM scheduler: invalid timestep {t}"
            )));
        }
        let a_t = self.schedule.alpha_bar(t as usize)?;
        let a_prev = self.alpha_bar_or_final(prev_t)?;
        let (beta_t, beta_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.cfg.prediction_type {
            PredictionType::VPrediction => {
                (model_output.affine(a_t.sqrt(), 0.0)? + sample.affine(beta_t.sqrt(), 0.0)?)?
            }
            _ => model_output.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * beta_prev.sqrt() + (a_t * beta_t * a_prev).sqrt();
        let update = div_scalar(&eps.affine(a_prev - a_t, 0.0)?, denom)?;
        Ok((sample.affine(sample_coeff, 0.0)? - update)?)
    }
}

impl Scheduler for PndmScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let n = self.cfg.num_train_timesteps;
        schedule::check_steps(steps, n)?;
        // diffusers builds them ascending; the DDIM-style list reversed is the same values.
        let mut asc =
            schedule::spaced_timesteps(self.cfg.timestep_spacing, n, steps, self.cfg.steps_offset);
        asc.reverse();
        // PLMS list: all but the last, the second-to-last again, then the last; visited descending.
        let k = asc.len();
        let mut plms: Vec<f64> = asc[..k - 1].to_vec();
        if k >= 2 {
            plms.push(asc[k - 2]);
        }
        plms.push(asc[k - 1]);
        plms.reverse();
        self.timesteps = plms;
        self.step_ratio = (n / steps) as i64;
        self.ets.clear();
        self.cur_sample = None;
        self.counter = 0;
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

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.step_ratio == 0 {
            return Err(Error::invalid(
                "PNDM scheduler: call set_timesteps before step",
            ));
        }
        schedule::same_shape(sample, model_output, "PNDM step: model output")?;
        if t.fract() != 0.0 {
            return Err(Error::invalid(format!(
                "PNDM scheduler: timestep {t} is not an integer"
            )));
        }
        let mut t = t as i64;
        let mut prev_t = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            // The repeated timestep: step again from the first sample, from one ratio higher.
            prev_t = t;
            t += self.step_ratio;
        }

        let e = &self.ets;
        let k = e.len();
        let (eps, sample) = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            (model_output.clone(), sample.clone())
        } else if k == 1 && self.counter == 1 {
            let first = self
                .cur_sample
                .take()
                .ok_or_else(|| Error::invalid("PNDM scheduler: second step without a first one"))?;
            (div_scalar(&(model_output + &e[0])?, 2.0)?, first)
        } else if k == 2 {
            let m = (e[1].affine(3.0, 0.0)? - &e[0])?;
            (div_scalar(&m, 2.0)?, sample.clone())
        } else if k == 3 {
            let m =
                ((e[2].affine(23.0, 0.0)? - e[1].affine(16.0, 0.0)?)? + e[0].affine(5.0, 0.0)?)?;
            (div_scalar(&m, 12.0)?, sample.clone())
        } else {
            let m = (((e[3].affine(55.0, 0.0)? - e[2].affine(59.0, 0.0)?)?
                + e[1].affine(37.0, 0.0)?)?
                - e[0].affine(9.0, 0.0)?)?;
            (m.affine(1.0 / 24.0, 0.0)?, sample.clone())
        };
        let prev = self.prev_sample(&sample, t, prev_t, &eps)?;
        self.counter += 1;
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
