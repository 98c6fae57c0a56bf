//! The denoising loss of Stable Diffusion training (diffusers' `train_dreambooth` / `train_lora`):
//! noise clean latents to random timesteps with the training schedule, predict with the UNet, and
//! take the mean squared error against the scheduler's target (ε, v or x0 for the configured
//! `prediction_type`).

use crate::error::{Error, Result};
use crate::nn::params::gaussian;
use crate::sd::attention::ForwardCtx;
use crate::sd::scheduler::{NoiseSchedule, PredictionType, SchedulerConfig};
use crate::sd::unet::UNet2DConditionModel;
use candle_core::{DType, Tensor};
use rand::Rng;

/// The SD denoising loss for one noise schedule and prediction type.
pub struct DiffusionLoss {
    schedule: NoiseSchedule,
    prediction: PredictionType,
}

impl DiffusionLoss {
    /// The loss for `cfg`'s training schedule and `prediction_type`.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self {
            schedule: NoiseSchedule::new(cfg)?,
            prediction: cfg.prediction_type,
        })
    }

    /// Overrides the scheduler config's prediction type.
    pub fn with_prediction(mut self, p: PredictionType) -> Self {
        self.prediction = p;
        self
    }

    /// What the UNet is trained to predict.
    pub fn prediction(&self) -> PredictionType {
        self.prediction
    }

    /// Length T of the training schedule (timesteps are drawn from 0..T).
    pub fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }

    /// Standard-normal noise shaped like `x0` and one uniform training timestep per row, drawn
    /// from `rng` (noise first, then timesteps).
    pub fn draw(&self, x0: &Tensor, rng: &mut impl Rng) -> Result<(Tensor, Vec<usize>)> {
        let n = x0.elem_count();
        let v: Vec<f32> = (0..n).map(|_| gaussian(rng) as f32).collect();
        let noise = Tensor::from_vec(v, x0.dims(), x0.device())?;
        let b = x0.dim(0)?;
        let t = (0..b)
            .map(|_| rng.random_range(0..self.num_train_timesteps()))
            .collect();
        Ok((noise, t))
    }

    /// `mean((unet(add_noise(x0, noise, t), t, text) − target)²)` over all elements.
    /// `x0: [B, C, h, w]` clean latents (already scaled by the VAE factor), `text: [B, S, D]`,
    /// `noise` shaped like `x0`, `t` one training timestep per row.
    pub fn loss(
        &self,
        unet: &UNet2DConditionModel,
        x0: &Tensor,
        text: &Tensor,
        noise: &Tensor,
        t: &[usize],
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        self.loss_with_extra(unet, x0, text, noise, t, None, ctx)
    }

    /// [`Self::loss`] for a UNet with extra input channels: `extra: [B, E, h, w]` is appended to
    /// the noisy sample (an inpainting UNet's `[mask; masked image]`, diffusers' order); the target
    /// covers only the sample channels.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_with_extra(
        &self,
        unet: &UNet2DConditionModel,
        x0: &Tensor,
        text: &Tensor,
        noise: &Tensor,
        t: &[usize],
        extra: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let b = x0.dim(0)?;
        if t.len() != b {
            return Err(Error::invalid(format!(
                "diffusion loss: {} timesteps for a batch of {b}",
                t.len()
            )));
        }
        let noisy = self.schedule.add_noise(x0, noise, t)?;
        let target = self
            .schedule
            .training_target(self.prediction, x0, noise, t)?;
        let tt: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let tt = Tensor::from_vec(tt, b, x0.device())?;
        let input = match extra {
            Some(e) => Tensor::cat(&[&noisy, e], 1)?,
            None => noisy,
        };
        let pred = unet.forward(&input, &tt, text, ctx)?;
        Ok((pred.to_dtype(DType::F32)? - target)?.sqr()?.mean_all()?)
    }
}
