//! The training noise schedule shared by every scheduler (betas, cumulative alphas, the forward
//! process q(x_t | x_0), v-prediction targets and model-output conversion), plus the timestep
//! spacings of `set_timesteps`.
//!
//! diffusers keeps `betas` and `alphas_cumprod` as f32 tensors built by torch; the tables here
//! reproduce those f32 values bit for bit (torch's f32 `linspace` and its f64-accumulated
//! `cumprod`), and per-step coefficients are then computed in f64 from them.

use super::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Betas and cumulative alphas ᾱ of the training schedule, as f32 tables indexed by timestep.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
}

/// A model output split into the clean-sample and noise estimates.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Clean-sample estimate.
    pub x0: Tensor,
    /// Noise estimate.
    pub eps: Tensor,
}

impl NoiseSchedule {
    /// Builds the tables from `cfg` (`trained_betas` or `beta_schedule`).
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let n = cfg.num_train_timesteps;
        if n == 0 {
            return Err(Error::invalid("scheduler: num_train_timesteps must be > 0"));
        }
        let betas: Vec<f32> = match &cfg.trained_betas {
            Some(b) if b.len() != n => {
                return Err(Error::invalid(format!(
                    "scheduler: trained_betas has {} values but num_train_timesteps is {n}",
                    b.len()
                )))
            }
            Some(b) => b.iter().map(|&v| v as f32).collect(),
            None => match cfg.beta_schedule {
                BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
                BetaSchedule::ScaledLinear => {
                    torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                BetaSchedule::SquaredcosCapV2 => cosine_betas(n),
            },
        };
        // torch.cumprod on CPU accumulates f32 inputs in f64 and rounds each output.
        let mut acc = 1f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= (1f32 - b) as f64;
                acc as f32
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps T.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for t in 0..T.
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// ᾱ_t for t in 0..T.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ᾱ used past the last sampling step (DDIM, PNDM): 1 with `set_alpha_to_one`, else ᾱ_0.
    pub fn final_alpha_bar(&self, set_alpha_to_one: bool) -> Result<f64> {
        if set_alpha_to_one {
            Ok(1.0)
        } else {
            self.alpha_bar(0)
        }
    }

    /// ᾱ_t for a training timestep, as f64.
    pub fn alpha_bar(&self, t: usize) -> Result<f64> {
        self.alphas_cumprod
            .get(t)
            .map(|&a| a as f64)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "scheduler: timestep {t} is outside the training schedule (0..{})",
                    self.alphas_cumprod.len()
                ))
            })
    }

    /// Per-row `sqrt(ᾱ_t)` and `sqrt(1-ᾱ_t)` as `[B,1,..]` tensors, computed in f32 as diffusers does.
    fn row_coefficients(&self, like: &Tensor, t: &[usize], what: &str) -> Result<(Tensor, Tensor)> {
        let b = like.dim(0)?;
        if t.len() != b {
            return Err(Error::invalid(format!(
                "scheduler {what}: {} timesteps for a batch of {b}",
                t.len()
            )));
        }
        let mut sa = Vec::with_capacity(b);
        let mut s1a = Vec::with_capacity(b);
        for &ti in t {
            let a = self.alpha_bar(ti)? as f32;
            sa.push(a.sqrt());
            s1a.push((1f32 - a).sqrt());
        }
        let mut shape = vec![b];
        shape.resize(like.rank(), 1);
        let mk = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape.as_slice(), like.device())?.to_dtype(like.dtype())?)
        };
        Ok((mk(sa)?, mk(s1a)?))
    }

    /// q(x_t | x_0): `sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise`, one timestep per batch row.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        same_shape(original, noise, "add_noise: noise")?;
        let (sa, s1a) = self.row_coefficients(original, t, "add_noise")?;
        Ok((original.broadcast_mul(&sa)? + noise.broadcast_mul(&s1a)?)?)
    }

    /// The v-prediction target `sqrt(ᾱ_t)·noise - sqrt(1-ᾱ_t)·x0` (diffusers' `get_velocity`).
    pub fn velocity(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        same_shape(original, noise, "velocity: noise")?;
        let (sa, s1a) = self.row_coefficients(original, t, "velocity")?;
        Ok((noise.broadcast_mul(&sa)? - original.broadcast_mul(&s1a)?)?)
    }

    /// What a model with `prediction` is trained to output for (x0, noise, t).
    pub fn training_target(
        &self,
        prediction: PredictionType,
        original: &Tensor,
        noise: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        match prediction {
            PredictionType::Epsilon => Ok(noise.clone()),
            PredictionType::Sample => Ok(original.clone()),
            PredictionType::VPrediction => self.velocity(original, noise, t),
        }
    }

    /// Splits a model output at training timestep `t` into (x0, ε) estimates, for a `sample` in the
    /// DDPM parameterisation `x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε`. Same formulas and operation order as
    /// diffusers' DDIM step.
    pub fn predict(
        &self,
        prediction: PredictionType,
        model_output: &Tensor,
        sample: &Tensor,
        t: usize,
    ) -> Result<Prediction> {
        same_shape(sample, model_output, "model output")?;
        let a = self.alpha_bar(t)?;
        Ok(split_prediction(prediction, model_output, sample, a)?)
    }
}

/// (x0, ε) from a model output, given ᾱ of the sample's timestep.
pub(crate) fn split_prediction(
    prediction: PredictionType,
    m: &Tensor,
    sample: &Tensor,
    alpha_bar: f64,
) -> candle_core::Result<Prediction> {
    let sa = alpha_bar.sqrt();
    let sb = (1.0 - alpha_bar).sqrt();
    Ok(match prediction {
        PredictionType::Epsilon => Prediction {
            x0: div_scalar(&(sample - m.affine(sb, 0.0)?)?, sa)?,
            eps: m.clone(),
        },
        PredictionType::Sample => Prediction {
            x0: m.clone(),
            eps: div_scalar(&(sample - m.affine(sa, 0.0)?)?, sb)?,
        },
        PredictionType::VPrediction => Prediction {
            x0: (sample.affine(sa, 0.0)? - m.affine(sb, 0.0)?)?,
            eps: (m.affine(sa, 0.0)? + sample.affine(sb, 0.0)?)?,
        },
    })
}

/// `x / c` as a true division (torch divides by a 0-dim tensor; multiplying by 1/c could differ in
/// the last bit).
pub(crate) fn div_scalar(x: &Tensor, c: f64) -> candle_core::Result<Tensor> {
    let c = Tensor::new(c as f32, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_div(&c)
}

pub(crate) fn same_shape(sample: &Tensor, other: &Tensor, what: &str) -> Result<()> {
    if sample.dims() != other.dims() {
        return Err(Error::invalid(format!(
            "scheduler: {what} has shape {:?}, expected the sample's {:?}",
            other.dims(),
            sample.dims()
        )));
    }
    Ok(())
}

/// A timestep of the prepared run as a training-table index.
pub(crate) fn timestep_index(t: f64, num_train: usize) -> Result<usize> {
    if t.fract() != 0.0 || t < 0.0 || t >= num_train as f64 {
        return Err(Error::invalid(format!(
            "scheduler: timestep {t} is not an integer in 0..{num_train}"
        )));
    }
    Ok(t as usize)
}

pub(crate) fn check_steps(steps: usize, num_train: usize) -> Result<()> {
    if steps == 0 || steps > num_train {
        return Err(Error::invalid(format!(
            "scheduler: number of inference steps must be in 1..={num_train}, got {steps}"
        )));
    }
    Ok(())
}

/// A run can only begin at one of its own timesteps (`len` of them).
pub(crate) fn check_begin_index(index: usize, len: usize) -> Result<()> {
    if index >= len {
        return Err(Error::invalid(format!(
            "scheduler: start index {index} is outside the prepared run of {len} timesteps"
        )));
    }
    Ok(())
}

/// torch.linspace(start, end, n, dtype=float32) on CPU: f32 step, values `start + step·i` for the
/// first half and `end - step·(n-1-i)` for the second, each a single fused multiply-add.
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// `squaredcos_cap_v2` (diffusers' `betas_for_alpha_bar`, cosine), computed in f64, stored f32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// numpy.linspace(start, stop, num) in float64: `i·step + start`, last value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy.arange(start, stop, step) for floats: `ceil((stop-start)/step)` values `start + i·delta`
/// with `delta = (start+step) - start` (so it can yield one more value than expected, as numpy does).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// The timesteps of an `n`-step run in visiting (descending) order as DDPM/DDIM compute them
/// before their integer cast: `linspace`, `leading` (+ `steps_offset`) or `trailing`.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            np_arange(num_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}
