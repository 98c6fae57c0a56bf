//! Sampling pipelines on a loaded Stable Diffusion model: text-to-image and inpainting (9-channel
//! UNet), with classifier-free guidance. The loops follow diffusers' `StableDiffusionPipeline` and
//! `StableDiffusionInpaintPipeline` step for step, including the order in which random tensors are
//! drawn, so a recorded PyTorch run can be replayed exactly.

use super::attention::ForwardCtx;
use super::clip::ClipTextModel;
use super::guidance::{apply_cfg, uses_cfg};
use super::model_folder::ModelParams;
use super::noise::NoiseSource;
use super::pixel_norm::PixelNorm;
use super::presets::Preset;
use super::scheduler::{make_scheduler, Scheduler, SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use crate::error::{Error, Result};
use crate::nn::Params;
use candle_core::{DType, Device, Tensor};

/// A complete diffusers model folder, loaded.
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// The image <-> UNet-sample codec: `Some` for latent-space models (SD), `None` for
    /// pixel-space models, whose UNet denoises 3-channel images in [-1, 1] directly.
    pub vae: Option<AutoencoderKL>,
    /// Pixel-space models only: the UNet denoises standardised pixels (see `pixel_norm.rs`);
    /// `None` = plain [-1, 1].
    pub pixel_norm: Option<PixelNorm>,
    pub unet: UNet2DConditionModel,
    pub scheduler_config: SchedulerConfig,
    /// The scheduler class named in `scheduler_config.json`, used when the caller names none.
    pub default_scheduler: SchedulerKind,
    pub device: Device,
}

/// Settings shared by both pipelines.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    /// None: the model folder's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    /// DDIM's eta (0 = deterministic DDIM).
    pub eta: f64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 7.5,
            width: 512,
            height: 512,
            scheduler: None,
            eta: 0.0,
        }
    }
}

impl StableDiffusion {
    /// A model in a preset's shapes with fresh random weights (benchmarks, smoke runs) and the
    /// built-in CLIP vocabulary.
    pub fn from_preset(p: &Preset, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self::from_preset_with_params(p, seed, device)?.0)
    }

    /// [`Self::from_preset`] and the fresh parameter stores its components were built from (all
    /// weights trainable `Var`s): the start of training from scratch, and what
    /// [`Self::save`](StableDiffusion::save) writes.
    pub fn from_preset_with_params(
        p: &Preset,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, ModelParams)> {
        // One seed per component so changing one model's shape leaves the others' weights alone.
        let fresh = |k: u64| Params::fresh(seed.wrapping_mul(0x9E37_79B9).wrapping_add(k), device);
        let params = ModelParams {
            text_encoder: fresh(1),
            unet: fresh(3),
            vae: (!p.pixel_space).then(|| fresh(2)),
        };
        let sd = Self {
            tokenizer: ClipTokenizer::embedded()?,
            text_encoder: ClipTextModel::new(&p.text, &params.text_encoder)?,
            vae: match &params.vae {
                Some(vp) => Some(AutoencoderKL::new(&p.vae, vp)?),
                None => None,
            },
            pixel_norm: None,
            unet: UNet2DConditionModel::new(&p.unet, &params.unet)?,
            scheduler_config: p.scheduler.clone(),
            default_scheduler: SchedulerKind::Pndm,
            device: device.clone(),
        };
        Ok((sd, params))
    }

    /// Factor between image and latent resolution (8 for SD, 1 in pixel space).
    pub fn vae_scale_factor(&self) -> usize {
        match &self.vae {
            Some(v) => 1 << (v.config().block_out_channels.len() - 1),
            None => 1,
        }
    }

    pub fn is_pixel_space(&self) -> bool {
        self.vae.is_none()
    }

    /// The VAE of a latent-space model; an error naming the problem for a pixel-space one.
    pub fn vae(&self) -> Result<&AutoencoderKL> {
        self.vae
            .as_ref()
            .ok_or_else(|| Error::invalid("this is a pixel-space model: it has no VAE"))
    }

    /// Channels of the space the UNet denoises (VAE latent channels, or 3 for RGB pixels).
    pub fn sample_channels(&self) -> usize {
        match &self.vae {
            Some(v) => v.config().latent_channels,
            None => 3,
        }
    }

    /// Images `[n, 3, H, W]` in [-1, 1] → clean UNet samples (scaled posterior mean, or the
    /// pixels themselves).
    pub fn encode_mean(&self, images: &Tensor) -> Result<Tensor> {
        match &self.vae {
            Some(v) => Ok(v.scale_latent(&v.encode(images)?.mean)?),
            None => self.normalise_pixels(images),
        }
    }

    /// Like [`Self::encode_mean`] but sampling the VAE posterior with noise drawn from `noise`
    /// (the inpainting pipeline's draw order); pixel space draws nothing.
    fn encode_sample(&self, images: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        match &self.vae {
            Some(v) => {
                let post = v.encode(images)?;
                let eps = noise.draw(post.mean.dims(), &self.device)?;
                Ok(v.scale_latent(&post.sample(&eps)?)?)
            }
            None => self.normalise_pixels(images),
        }
    }

    /// Text embeddings `[n, 77, D]` (last hidden state, as SD pipelines use it).
    pub fn encode_text(&self, prompts: &[&str]) -> Result<Tensor> {
        let mut ids = Vec::new();
        for p in prompts {
            ids.push(Tensor::new(
                self.tokenizer.encode(p).as_slice(),
                &self.device,
            )?);
        }
        let ids = Tensor::stack(&ids, 0)?;
        Ok(self.text_encoder.forward(&ids)?.last_hidden_state)
    }

    /// `[uncond; cond]` when guidance is on, else `[cond]`.
    fn prompt_embeddings(&self, o: &SampleOptions) -> Result<Tensor> {
        if uses_cfg(o.guidance) {
            self.encode_text(&[&o.negative_prompt, &o.prompt])
        } else {
            self.encode_text(&[&o.prompt])
        }
    }

    fn scheduler(&self, o: &SampleOptions) -> Result<Box<dyn Scheduler>> {
        let kind = o.scheduler.unwrap_or(self.default_scheduler);
        let mut s = make_scheduler(kind, &self.scheduler_config, o.eta)?;
        s.set_timesteps(o.steps)?;
        Ok(s)
    }

    fn check_size(&self, o: &SampleOptions) -> Result<(usize, usize)> {
        let f = self.vae_scale_factor();
        if o.width == 0
            || o.height == 0
            || !o.width.is_multiple_of(f)
            || !o.height.is_multiple_of(f)
        {
            return Err(Error::invalid(format!(
                "width and height must be positive multiples of {f}, got {}x{}",
                o.width, o.height
            )));
        }
        if o.steps == 0 {
            return Err(Error::invalid("steps must be at least 1"));
        }
        Ok((o.height / f, o.width / f))
    }

    /// Text-to-image; returns the final (unscaled-by-VAE) latents `[1, 4, h, w]` in the scaled latent space.
    pub fn txt2img(
        &self,
        o: &SampleOptions,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let latent_ch = self.sample_channels();
        if self.unet.in_channels() != latent_ch {
            return Err(Error::invalid(format!(
                "txt2img needs a {latent_ch}-channel UNet; this model's UNet has {} input channels (an inpainting model: use `inpaint`)",
                self.unet.in_channels()
            )));
        }
        let (h, w) = self.check_size(o)?;
        let mut sched = self.scheduler(o)?;
        let latents =
            (noise.draw(&[1, latent_ch, h, w], &self.device)? * sched.init_noise_sigma())?;
        self.denoise(o, sched.as_mut(), latents, None, noise, progress)
    }

    /// Inpainting with a 9-channel UNet. `image: [1, 3, H, W]` in [-1, 1]; `mask: [1, 1, H, W]` in
    /// {0, 1}, 1 = repaint. `strength` < 1 starts from the noised image (SDEdit-style partial denoising).
    #[allow(clippy::too_many_arguments)]
    pub fn inpaint(
        &self,
        o: &SampleOptions,
        image: &Tensor,
        mask: &Tensor,
        strength: f64,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let latent_ch = self.sample_channels();
        if self.unet.in_channels() != 2 * latent_ch + 1 {
            return Err(Error::invalid(format!(
                "inpaint needs an inpainting UNet with {} input channels; this model's UNet has {}",
                2 * latent_ch + 1,
                self.unet.in_channels()
            )));
        }
        if !(0.0..=1.0).contains(&strength) || strength == 0.0 {
            return Err(Error::invalid(format!(
                "strength must be in (0, 1], got {strength}"
            )));
        }
        let (h, w) = self.check_size(o)?;
        let (_, _, ih, iw) = image.dims4()?;
        let (_, _, mh, mw) = mask.dims4()?;
        if (ih, iw) != (o.height, o.width) || (mh, mw) != (o.height, o.width) {
            return Err(Error::invalid(format!(
                "image is {iw}x{ih} and mask is {mw}x{mh}; both must be {}x{} (the requested size)",
                o.width, o.height
            )));
        }
        let mut sched = self.scheduler(o)?;
        // Partial denoising keeps only the last `strength` share of the schedule.
        let all = sched.timesteps().to_vec();
        let order_steps = all.len() / o.steps.max(1);
        let init = ((o.steps as f64 * strength) as usize).min(o.steps);
        let start = (o.steps - init) * order_steps.max(1);
        let latents = if strength >= 1.0 {
            (noise.draw(&[1, latent_ch, h, w], &self.device)? * sched.init_noise_sigma())?
        } else {
            let z0 = self.encode_sample(image, noise)?;
            let n = noise.draw(&[1, latent_ch, h, w], &self.device)?;
            let t0 = all.get(start).copied().unwrap_or(0.0) as usize;
            sched.add_noise(&z0, &n, &[t0])?
        };
        // Conditioning: the mask at latent resolution (nearest: every f-th pixel) and the latent of
        // the image with the masked region blanked.
        let f = self.vae_scale_factor();
        let rows = Tensor::arange_step(0u32, (h * f) as u32, f as u32, &self.device)?;
        let cols = Tensor::arange_step(0u32, (w * f) as u32, f as u32, &self.device)?;
        let mask_lat = mask.index_select(&rows, 2)?.index_select(&cols, 3)?;
        let keep = mask.lt(0.5)?.to_dtype(DType::F32)?;
        let masked = image.broadcast_mul(&keep)?;
        let masked_lat = self.encode_sample(&masked, noise)?;
        let cond = Tensor::cat(&[&mask_lat, &masked_lat], 1)?;
        self.denoise_from(
            o,
            sched.as_mut(),
            latents,
            Some(cond),
            start,
            noise,
            progress,
        )
    }

    fn denoise(
        &self,
        o: &SampleOptions,
        sched: &mut dyn Scheduler,
        latents: Tensor,
        extra: Option<Tensor>,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.denoise_from(o, sched, latents, extra, 0, noise, progress)
    }

    /// The shared reverse loop. `extra` is concatenated to the UNet input channels (inpainting).
    #[allow(clippy::too_many_arguments)]
    fn denoise_from(
        &self,
        o: &SampleOptions,
        sched: &mut dyn Scheduler,
        mut latents: Tensor,
        extra: Option<Tensor>,
        start: usize,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let embeds = self.prompt_embeddings(o)?;
        let cfg = uses_cfg(o.guidance);
        let copies = if cfg { 2 } else { 1 };
        let extra = match extra {
            Some(e) => Some(Tensor::cat(&vec![&e; copies], 0)?),
            None => None,
        };
        let mut ctx = ForwardCtx::default();
        let timesteps: Vec<f64> = sched.timesteps()[start..].to_vec();
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let inp = Tensor::cat(&vec![&latents; copies], 0)?;
            let inp = sched.scale_model_input(&inp, t)?;
            let inp = match &extra {
                Some(e) => Tensor::cat(&[&inp, e], 1)?,
                None => inp,
            };
            let tt = Tensor::full(t as f32, copies, &self.device)?;
            ctx.timestep = Some(t);
            let mut pred = self.unet.forward(&inp, &tt, &embeds, &ctx)?;
            if cfg {
                pred = apply_cfg(&pred, o.guidance)?;
            }
            let step_noise = if sched.needs_noise_at(t) {
                Some(noise.draw(latents.dims(), &self.device)?)
            } else {
                None
            };
            latents = sched.step(&pred, t, &latents, step_noise.as_ref())?;
            progress(i + 1, total);
        }
        Ok(latents)
    }

    /// Scaled latents → images in [-1, 1] (pixel space: the samples, clamped to [-1, 1]).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        match &self.vae {
            Some(v) => Ok(v.decode(&v.unscale_latent(latents)?)?),
            None => {
                let x = match &self.pixel_norm {
                    Some(n) => n.denormalise(latents)?,
                    None => latents.clone(),
                };
                Ok(x.clamp(-1f32, 1f32)?)
            }
        }
    }

    /// Pixel space: images in [-1, 1] → the UNet's sample space.
    fn normalise_pixels(&self, images: &Tensor) -> Result<Tensor> {
        match &self.pixel_norm {
            Some(n) => n.normalise(images),
            None => Ok(images.clone()),
        }
    }
}
