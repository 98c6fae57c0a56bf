//! Sampling DualAnoDiff pairs (METHODS.md A.6) through the public denoising loop: `m` pairs run
//! as one interleaved batch `[whole_0, part_0, …]` (branch `[0, 1, …]`), classifier-free guidance
//! with the negative prompt, and — with BCM — a reference pass before every UNet call over the
//! background latents noised to that step's timestep (the unconditional rows reference the
//! latent of an all-zero image, i.e. mid-grey in [-1, 1]).
//!
//! Every random tensor of pair `k` comes from its own [`NoiseSource`] (`streams[k]`), in this
//! order: the initial latents `[2, C, h, w]` (whole, part); then, before every UNet call, the
//! reference noise `[g, C, h, w]` (g = 2 with guidance: unconditional reference first, then the
//! background; 1 without); then any step noise the scheduler draws, `[2, C, h, w]`. So a pair
//! depends only on its own stream, whatever batch it runs in.

use super::model::{DualModel, PART, WHOLE};
use crate::error::{Error, Result};
use crate::sd::attention::{ForwardCtx, PassKind};
use crate::sd::denoise::{denoise, partial_start, Conditioning, DenoiseOptions, StepInput};
use crate::sd::guidance::uses_cfg;
use crate::sd::noise::NoiseSource;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::scheduler::{make_scheduler, Scheduler, SchedulerConfig, SchedulerKind};
use crate::sd::unet::UNet2DConditionModel;
use candle_core::{Device, Tensor};
use std::cell::RefCell;

/// Settings of one sampling run.
#[derive(Clone, Debug)]
pub struct SampleSettings {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: off).
    pub guidance: f64,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// Negative prompt of the unconditional rows.
    pub negative_prompt: String,
}

impl SampleSettings {
    /// METHODS.md A.6: with BCM guidance 2.0 and 50 steps, without BCM 2.5 and 100 steps; PNDM,
    /// empty negative prompt.
    pub fn paper(bcm: bool) -> Self {
        Self {
            steps: if bcm { 50 } else { 100 },
            guidance: if bcm { 2.0 } else { 2.5 },
            scheduler: SchedulerKind::Pndm,
            negative_prompt: String::new(),
        }
    }
}

/// BCM references of a batch: one clean background latent per pair and the clean latent of the
/// all-zero image (for the unconditional rows), both in the UNet's sample space.
pub struct References<'a> {
    /// `[m, C, h, w]`.
    pub backgrounds: &'a Tensor,
    /// `[1, C, h, w]`.
    pub zero: &'a Tensor,
}

/// Partial denoising (SDEdit-style) instead of sampling from pure noise: the whole rows start
/// from `whole` and the part rows from `part`, noised to the first kept timestep, and the run keeps
/// the last `int(steps · strength)` steps (as diffusers' img2img).
pub struct InitLatents<'a> {
    /// Clean whole-row samples, `[m, C, h, w]` (a defect-free image per pair).
    pub whole: &'a Tensor,
    /// The clean part-row sample, `[1, C, h, w]` (the all-zero image: a part image is mid-grey
    /// outside its defect).
    pub part: &'a Tensor,
    /// Share of the schedule that is run, in (0, 1]; 1 starts from (almost) pure noise.
    pub strength: f64,
}

/// The three prompt embeddings a run uses, each `[1, S, D]` (through the text-encoder LoRA).
pub struct PairText {
    /// The whole-image prompt.
    pub whole: Tensor,
    /// The anomaly-part prompt.
    pub part: Tensor,
    /// The negative prompt (unconditional rows).
    pub negative: Tensor,
}

impl PairText {
    /// Encodes the model's two prompts and `negative` with `sd`'s tokenizer and text encoder
    /// (install the model first so its text-encoder LoRA applies).
    pub fn encode(sd: &StableDiffusion, model: &DualModel, negative: &str) -> Result<Self> {
        let t = sd.encode_text(&[
            &model.config.whole_prompt,
            &model.config.part_prompt,
            negative,
        ])?;
        Ok(Self {
            whole: t.get(0)?.unsqueeze(0)?,
            part: t.get(1)?.unsqueeze(0)?,
            negative: t.get(2)?.unsqueeze(0)?,
        })
    }
}

/// The base-model pieces sampling needs.
pub struct Backbone<'a> {
    /// The UNet, with the dual model installed.
    pub unet: &'a UNet2DConditionModel,
    /// The model's scheduler settings.
    pub scheduler: &'a SchedulerConfig,
}

impl<'a> Backbone<'a> {
    /// The UNet and scheduler settings of a loaded model.
    pub fn of(sd: &'a StableDiffusion) -> Self {
        Self {
            unet: &sd.unet,
            scheduler: &sd.scheduler_config,
        }
    }
}

/// Samples `streams.len()` pairs of `[c, h, w]` samples; returns the final latents
/// `[2m, c, h, w]` interleaved (whole_0, part_0, …). `references: None` samples without BCM;
/// `init: None` starts from pure noise (the paper).
#[allow(clippy::too_many_arguments)]
pub fn sample_pairs(
    backbone: &Backbone,
    model: &DualModel,
    text: &PairText,
    settings: &SampleSettings,
    references: Option<References>,
    init: Option<InitLatents>,
    streams: &mut [Box<dyn NoiseSource>],
    (c, h, w): (usize, usize, usize),
) -> Result<Tensor> {
    let m = streams.len();
    if m == 0 {
        return Err(Error::invalid("DualAnoDiff sampling: no pairs requested"));
    }
    let unet = backbone.unet;
    let dev = text.whole.device().clone();
    let cfg = uses_cfg(settings.guidance);
    let g = if cfg { 2 } else { 1 };
    if let Some(r) = &references {
        if r.backgrounds.dims() != [m, c, h, w] || r.zero.dims() != [1, c, h, w] {
            return Err(Error::invalid(format!(
                "DualAnoDiff sampling: references {:?} / {:?} for {m} pairs of [{c}, {h}, {w}]",
                r.backgrounds.dims(),
                r.zero.dims()
            )));
        }
    }
    let make = || -> Result<Box<dyn Scheduler>> {
        let mut s = make_scheduler(settings.scheduler, backbone.scheduler, 0.0)?;
        s.set_timesteps(settings.steps)?;
        Ok(s)
    };
    let mut sched = make()?;
    let mut first = Vec::with_capacity(m);
    for s in streams.iter_mut() {
        first.push(s.draw(&[2, c, h, w], &dev)?);
    }
    let first = Tensor::cat(&first, 0)?;
    let (latents, start) = match &init {
        None => ((first * sched.init_noise_sigma())?, 0),
        Some(i) => {
            if i.whole.dims() != [m, c, h, w] || i.part.dims() != [1, c, h, w] {
                return Err(Error::invalid(format!(
                    "DualAnoDiff sampling: init samples {:?} / {:?} for {m} pairs of [{c}, {h}, {w}]",
                    i.whole.dims(),
                    i.part.dims()
                )));
            }
            let start = partial_start(settings.steps, i.strength)?;
            let clean = super::pairs::interleave(i.whole, &i.part.repeat((m, 1, 1, 1))?)?;
            let t0 = sched.timesteps()[start];
            (sched.add_noise_at(&clean, &first, &vec![t0; 2 * m])?, start)
        }
    };

    let rep = |t: &Tensor, n: usize| -> Result<Tensor> { Ok(t.repeat((n, 1, 1))?) };
    let cond = super::pairs::interleave(&rep(&text.whole, m)?, &rep(&text.part, m)?)?;
    let conditioning = if cfg {
        Conditioning::guided(cond, rep(&text.negative, 2 * m)?)
    } else {
        Conditioning::new(cond)
    };

    let streams = RefCell::new(streams);
    model.store.clear();
    let result = {
        // Reference rows follow the whole rows of the UNet batch: unconditional half first.
        let ref_emb = if cfg {
            Tensor::cat(&[rep(&text.negative, m)?, rep(&text.whole, m)?], 0)?
        } else {
            rep(&text.whole, m)?
        };
        let twin = make()?;
        let mut hook = |input: &StepInput<'_>| -> Result<()> {
            let Some(r) = &references else {
                return Ok(());
            };
            let mut per_pair = Vec::with_capacity(m);
            for s in streams.borrow_mut().iter_mut() {
                per_pair.push(s.draw(&[g, c, h, w], &dev)?);
            }
            // [m × (uncond, cond)] → [uncond_0.., cond_0..].
            let noise = Tensor::stack(&per_pair, 1)?.reshape((g * m, c, h, w))?;
            let clean = if cfg {
                Tensor::cat(&[&r.zero.repeat((m, 1, 1, 1))?, r.backgrounds], 0)?
            } else {
                r.backgrounds.clone()
            };
            let noisy = twin.add_noise_at(&clean, &noise, &vec![input.timestep; g * m])?;
            let inp = twin.scale_model_input(&noisy, input.timestep)?;
            let tt = Tensor::full(input.timestep as f32, g * m, &dev)?;
            let ctx = ForwardCtx {
                branch: Some(vec![WHOLE; g * m]),
                timestep: Some(input.timestep),
                pass: PassKind::Reference,
                observer: None,
            };
            unet.forward(&inp, &tt, &ref_emb, &ctx)?;
            Ok(())
        };
        let mut o = DenoiseOptions::new(&conditioning);
        o.guidance = settings.guidance;
        o.start = start;
        o.ctx.branch = Some((0..m).flat_map(|_| [WHOLE, PART]).collect());
        o.hook = Some(&mut hook);
        let mut step_noise = PairRows { streams: &streams };
        denoise(unet, sched.as_mut(), latents, o, &mut step_noise)
    };
    // A failed step may leave recorded states behind; never let them reach another run.
    model.store.clear();
    result
}

/// Step noise `[2m, …]` drawn pair by pair from each pair's own stream.
struct PairRows<'s, 'a> {
    streams: &'s RefCell<&'a mut [Box<dyn NoiseSource>]>,
}

impl NoiseSource for PairRows<'_, '_> {
    fn draw(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let mut streams = self.streams.borrow_mut();
        let m = streams.len();
        if shape.first() != Some(&(2 * m)) {
            return Err(Error::invalid(format!(
                "DualAnoDiff sampling: step noise {shape:?} for {m} pairs"
            )));
        }
        let mut one = shape.to_vec();
        one[0] = 2;
        let parts = streams
            .iter_mut()
            .map(|s| s.draw(&one, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}
