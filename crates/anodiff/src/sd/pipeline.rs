//! A loaded Stable Diffusion model and its two sampling pipelines: text-to-image and inpainting
//! (9-channel UNet), with classifier-free guidance. Both prepare the start latents, conditioning
//! and scheduler as diffusers' `StableDiffusionPipeline` and `StableDiffusionInpaintPipeline` do,
//! including the order in which random tensors are drawn, then hand over to the shared loop
//! [`super::denoise::denoise`]; a recorded PyTorch run therefore replays exactly.

use super::clip::ClipTextModel;
use super::denoise::{denoise, partial_start, Conditioning, DenoiseOptions};
use super::guidance::uses_cfg;
use super::model_params::ModelParams;
use super::noise::NoiseSource;
use super::pixel_norm::PixelNorm;
use super::presets::{fresh_params, Component, Preset};
use super::scheduler::{make_scheduler, Scheduler, SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// A complete model — from a diffusers folder or a preset — ready to sample.
pub struct StableDiffusion {
    /// Turns prompts into token ids.
    pub tokenizer: ClipTokenizer,
    /// Token ids → text states for cross-attention.
    pub text_encoder: ClipTextModel,
    /// The image <-> UNet-sample codec: `Some` for latent-space models (SD), `None` for
    /// pixel-space models, whose UNet denoises 3-channel images in [-1, 1] directly.
    pub vae: Option<AutoencoderKL>,
    /// Pixel-space models only: the UNet denoises standardised pixels (see `pixel_norm.rs`);
    /// `None` = plain [-1, 1].
    pub pixel_norm: Option<PixelNorm>,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// Noise schedule and sampler settings (`scheduler/scheduler_config.json`).
    pub scheduler_config: SchedulerConfig,
    /// The scheduler class named in `scheduler_config.json`, used when the caller names none.
    pub default_scheduler: SchedulerKind,
    /// Device every model lives on.
    pub device: Device,
}

/// Settings shared by both pipelines.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// What to render.
    pub prompt: String,
    /// What to steer away from under guidance (often empty).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or below turns guidance off.
    pub guidance: f64,
    /// Image width in pixels. `None`: txt2img renders at the model's native size
    /// ([`StableDiffusion::native_size`]), inpaint at the image's own size.
    pub width: Option<usize>,
    /// Image height in pixels; `None` as for `width`.
    pub height: Option<usize>,
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
            width: None,
            height: None,
            scheduler: None,
            eta: 0.0,
        }
    }
}

impl SampleOptions {
    /// The (width, height) to render: the requested sizes, each missing one taken from the model's
    /// native size.
    pub fn size_for(&self, sd: &StableDiffusion) -> (usize, usize) {
        let native = sd.native_size();
        (self.width.unwrap_or(native), self.height.unwrap_or(native))
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
        let fresh = |c: Component| fresh_params(seed, c, device);
        let params = ModelParams {
            text_encoder: fresh(Component::TextEncoder),
            unet: fresh(Component::Unet),
            vae: (!p.pixel_space).then(|| fresh(Component::Vae)),
        };
        Ok((Self::from_preset_params(p, &params, device)?, params))
    }

    /// [`Self::from_preset`] with every weight frozen (plain tensors, no `Var`): the base model of
    /// adapter training (LoRA, DualAnoDiff) in benchmarks, where only the adapters learn and the
    /// frozen VAE / text encoder must not enter the autograd graph.
    pub fn from_preset_frozen(p: &Preset, seed: u64, device: &Device) -> Result<Self> {
        let frozen = |c: Component| fresh_params(seed, c, device).with_trainable(|_| false);
        let params = ModelParams {
            text_encoder: frozen(Component::TextEncoder),
            unet: frozen(Component::Unet),
            vae: (!p.pixel_space).then(|| frozen(Component::Vae)),
        };
        Self::from_preset_params(p, &params, device)
    }

    fn from_preset_params(p: &Preset, params: &ModelParams, device: &Device) -> Result<Self> {
        Ok(Self {
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
        })
    }

    /// Factor between image and latent resolution: the VAE's own ([`VaeConfig::downscale_factor`],
    /// 8 for SD), 1 in pixel space.
    ///
    /// [`VaeConfig::downscale_factor`]: super::vae::VaeConfig::downscale_factor
    pub fn vae_scale_factor(&self) -> usize {
        self.vae
            .as_ref()
            .map_or(1, |v| v.config().downscale_factor())
    }

    /// The image side the model was built for, in pixels: UNet `sample_size` × the VAE factor, as
    /// diffusers' pipelines default to (a config without `sample_size` counts as SD's 64).
    pub fn native_size(&self) -> usize {
        self.unet.config().sample_size.unwrap_or(64) * self.vae_scale_factor()
    }

    /// True for a model without a VAE.
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

    /// The prompt (and, with guidance on, negative prompt) embeddings, one row each.
    fn conditioning(&self, o: &SampleOptions) -> Result<Conditioning> {
        if uses_cfg(o.guidance) {
            // One text-encoder batch, as diffusers runs it.
            let e = self.encode_text(&[&o.negative_prompt, &o.prompt])?;
            Ok(Conditioning::guided(e.narrow(0, 1, 1)?, e.narrow(0, 0, 1)?))
        } else {
            Ok(Conditioning::new(self.encode_text(&[&o.prompt])?))
        }
    }

    fn scheduler(&self, o: &SampleOptions) -> Result<Box<dyn Scheduler>> {
        let kind = o.scheduler.unwrap_or(self.default_scheduler);
        let mut s = make_scheduler(kind, &self.scheduler_config, o.eta)?;
        s.set_timesteps(o.steps)?;
        Ok(s)
    }

    /// Latent (h, w) for an image of `width`×`height` pixels; also rejects zero steps.
    fn check_size(&self, o: &SampleOptions, width: usize, height: usize) -> Result<(usize, usize)> {
        let f = self.vae_scale_factor();
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(Error::invalid(format!(
                "width and height must be positive multiples of {f}, got {width}x{height}"
            )));
        }
        if o.steps == 0 {
            return Err(Error::invalid("steps must be at least 1"));
        }
        Ok((height / f, width / f))
    }

    /// Text-to-image; returns the final latents `[1, C, h, w]` in the UNet's sample space (scaled
    /// VAE latents, or pixels; [`Self::decode`] turns them into an image).
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
        let (width, height) = o.size_for(self);
        let (h, w) = self.check_size(o, width, height)?;
        let mut sched = self.scheduler(o)?;
        let latents =
            (noise.draw(&[1, latent_ch, h, w], &self.device)? * sched.init_noise_sigma())?;
        let cond = self.conditioning(o)?;
        let opts = DenoiseOptions {
            guidance: o.guidance,
            progress: Some(progress),
            ..DenoiseOptions::new(&cond)
        };
        denoise(&self.unet, sched.as_mut(), latents, opts, noise)
    }

    /// Inpainting with a 9-channel UNet. `image: [1, 3, H, W]` in [-1, 1]; `mask: [1, 1, H, W]` in
    /// {0, 1}, 1 = repaint; both of the requested size (by default the image's own). `strength` in
    /// (0, 1] is the share of the schedule run: 1 starts from pure noise, less starts from the
    /// image noised to the first kept timestep (SDEdit-style), as diffusers'
    /// `StableDiffusionInpaintPipeline` does for every scheduler.
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
        if mask.dims().len() != 4 || mask.dim(0)? != 1 {
            return Err(Error::invalid(format!(
                "inpaint takes an image [1, 3, H, W] and a mask [1, 1, H, W], got {:?} and {:?}",
                image.dims(),
                mask.dims()
            )));
        }
        self.inpaint_batch(o, image, mask, strength, noise, progress)
    }

    /// [`Self::inpaint`] of one image under `B` masks at once (`masks: [B, 1, H, W]`), returning
    /// `[B, C, h, w]` final latents: AnomalySD's grid cells in one batch. Every row starts from
    /// the same noise (one draw, shared). The masked-image posterior draw of a latent model has
    /// one row per mask; a pixel model draws none, so there — with a scheduler that draws no step
    /// noise (DDIM with eta 0, PNDM, Euler without churn) — row `i` equals a single-mask call with
    /// mask `i` and the same seed. For `B = 1` the random draws are exactly [`Self::inpaint`]'s.
    #[allow(clippy::too_many_arguments)]
    pub fn inpaint_batch(
        &self,
        o: &SampleOptions,
        image: &Tensor,
        masks: &Tensor,
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
        let start = partial_start(o.steps, strength)?;
        let (image_dims, mask_dims) = (image.dims(), masks.dims());
        let (ih, iw, b, mh, mw) = match (image_dims, mask_dims) {
            (&[1, 3, ih, iw], &[b, 1, mh, mw]) if b > 0 => (ih, iw, b, mh, mw),
            _ => {
                return Err(Error::invalid(format!(
                    "inpaint takes an image [1, 3, H, W] and masks [B, 1, H, W], got {image_dims:?} and {mask_dims:?}"
                )))
            }
        };
        let (width, height) = (o.width.unwrap_or(iw), o.height.unwrap_or(ih));
        let (h, w) = self.check_size(o, width, height)?;
        if (ih, iw) != (height, width) || (mh, mw) != (height, width) {
            return Err(Error::invalid(format!(
                "image is {iw}x{ih} and mask is {mw}x{mh}; both must be {width}x{height} (the requested size)"
            )));
        }
        let mut sched = self.scheduler(o)?;
        let latents = if strength >= 1.0 {
            (noise.draw(&[1, latent_ch, h, w], &self.device)? * sched.init_noise_sigma())?
        } else {
            // The image latents (one posterior draw), then the noise, then the forward process to
            // the first kept timestep in the scheduler's own sample space (sigma space for Euler).
            let z0 = self.encode_sample(image, noise)?;
            let n = noise.draw(&[1, latent_ch, h, w], &self.device)?;
            let t0 = sched.timesteps()[start];
            sched.add_noise_at(&z0, &n, &[t0])?
        };
        let latents = latents.repeat((b, 1, 1, 1))?;
        // Conditioning: the mask at latent resolution (nearest: every f-th pixel) and the latent of
        // the image with the masked region blanked.
        let f = self.vae_scale_factor();
        let rows = Tensor::arange_step(0u32, (h * f) as u32, f as u32, &self.device)?;
        let cols = Tensor::arange_step(0u32, (w * f) as u32, f as u32, &self.device)?;
        let mask_lat = masks.index_select(&rows, 2)?.index_select(&cols, 3)?;
        let keep = masks.lt(0.5)?.to_dtype(DType::F32)?;
        let masked = image.broadcast_mul(&keep)?;
        let masked_lat = self.encode_sample(&masked, noise)?;
        let extra = Tensor::cat(&[&mask_lat, &masked_lat], 1)?;
        let cond = self.conditioning(o)?;
        let opts = DenoiseOptions {
            extra: Some(&extra),
            start,
            guidance: o.guidance,
            progress: Some(progress),
            ..DenoiseOptions::new(&cond)
        };
        denoise(&self.unet, sched.as_mut(), latents, opts, noise)
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
