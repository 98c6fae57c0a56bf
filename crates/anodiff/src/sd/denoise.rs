//! The reverse-diffusion loop every sampler drives: text-to-image, inpainting, and the anomaly
//! methods built on top (DualAnoDiff's paired whole/part rows with a BCM reference pass per step,
//! AnomalySD's batch of masks over one image started part-way through the schedule).
//!
//! One step follows diffusers' pipelines operation for operation: duplicate the latents for
//! classifier-free guidance, `scale_model_input`, append the extra channels, run the UNet, combine
//! the two halves, draw the step noise if the scheduler takes some, `step`. Keeping that order
//! (including when noise is drawn) is what lets a recorded PyTorch run be replayed exactly.
//!
//! # Batch layout
//! The latents hold `B` rows. Without guidance the UNet sees those `B` rows. With guidance
//! (scale > 1) it sees `2B` rows, the unconditional half first, as diffusers stacks them:
//!
//! | UNet row | latents row | embeddings | extra | `ctx.branch` |
//! |---|---|---|---|---|
//! | `r` (`r < B`) | `r` | `uncond[r]` | `extra[r]` | `branch[r]` |
//! | `B + r` | `r` | `cond[r]` | `extra[r]` | `branch[r]` |
//!
//! So DualAnoDiff's interleaved rows `[whole₀, part₀, whole₁, part₁]` with branch `[0, 1, 0, 1]`
//! run as branch `[0, 1, 0, 1, 0, 1, 0, 1]`, and `apply_cfg` pairs row `r` with row `B + r`.

use super::attention::ForwardCtx;
use super::guidance::{apply_cfg, uses_cfg};
use super::noise::NoiseSource;
use super::scheduler::Scheduler;
use super::unet::UNet2DConditionModel;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Text conditioning of a batch: one embedding row per latent row, so rows may have different
/// prompts. A tensor with a single row is shared by every latent row.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Prompt embeddings `[B, S, D]` (or `[1, S, D]`).
    pub cond: Tensor,
    /// Unconditional (negative-prompt) embeddings `[B, S, D]` (or `[1, S, D]`) for
    /// classifier-free guidance. Required when the guidance scale is above 1; unused otherwise
    /// (diffusers skips the unconditional pass then).
    pub uncond: Option<Tensor>,
}

impl Conditioning {
    /// Conditioning without an unconditional branch (guidance off).
    pub fn new(cond: Tensor) -> Self {
        Self { cond, uncond: None }
    }

    /// Conditioning for classifier-free guidance.
    pub fn guided(cond: Tensor, uncond: Tensor) -> Self {
        Self {
            cond,
            uncond: Some(uncond),
        }
    }
}

/// What a [`StepHook`] sees before the UNet call of one step. Every tensor is exactly what the
/// main pass receives, rows laid out as in the module docs.
pub struct StepInput<'a> {
    /// Position of this step among the steps this call runs (0-based).
    pub step: usize,
    /// Position of this step in `Scheduler::timesteps()` (`start + step`).
    pub index: usize,
    /// The diffusion timestep (as passed to the UNet; Euler's may be fractional).
    pub timestep: f64,
    /// The UNet input `[N, C + E, h, w]`: scaled latents (duplicated under guidance) followed by
    /// the extra channels.
    pub model_input: &'a Tensor,
    /// The timestep per UNet row, `[N]`.
    pub timesteps: &'a Tensor,
    /// Text embeddings `[N, S, D]`, row-aligned with `model_input`.
    pub encoder_hidden_states: &'a Tensor,
    /// The main pass's context: branch per UNet row, this timestep, [`super::attention::PassKind::Main`].
    pub ctx: &'a ForwardCtx,
}

/// Runs before every UNet call of the loop, e.g. to run BCM's reference pass (a UNet forward with
/// `PassKind::Reference` that lets processors record features) or to set per-step processor
/// state. An error stops the loop and is returned by [`denoise`].
pub trait StepHook {
    /// Called once per step, before the main UNet pass.
    fn before_unet(&mut self, input: &StepInput<'_>) -> Result<()>;
}

impl<F: FnMut(&StepInput<'_>) -> Result<()>> StepHook for F {
    fn before_unet(&mut self, input: &StepInput<'_>) -> Result<()> {
        self(input)
    }
}

/// Everything [`denoise`] needs besides the model, scheduler, latents and noise.
pub struct DenoiseOptions<'a> {
    /// Text embeddings per latent row.
    pub conditioning: &'a Conditioning,
    /// Channels appended to the scaled latents at every step, `[B, E, h, w]` (or `[1, E, h, w]`),
    /// e.g. inpainting's `[mask; masked-image latents]`.
    pub extra: Option<&'a Tensor>,
    /// Context of the main passes: `branch` has one entry per latent row (`B`), duplicated under
    /// guidance by the loop; `timestep` is set by the loop at every step; `pass` is kept.
    pub ctx: ForwardCtx,
    /// Position in `Scheduler::timesteps()` to start from (0 = the whole run; partial denoising
    /// starts later from suitably noised latents).
    pub start: usize,
    /// Classifier-free guidance scale; above 1 turns guidance on.
    pub guidance: f64,
    /// Called before every UNet call.
    pub hook: Option<&'a mut dyn StepHook>,
    /// Called after every step with (steps done, steps in this call).
    pub progress: Option<&'a mut dyn FnMut(usize, usize)>,
}

impl<'a> DenoiseOptions<'a> {
    /// The whole run, no guidance, no extra channels, default context, no hook or progress.
    pub fn new(conditioning: &'a Conditioning) -> Self {
        Self {
            conditioning,
            extra: None,
            ctx: ForwardCtx::default(),
            start: 0,
            guidance: 1.0,
            hook: None,
            progress: None,
        }
    }
}

/// Denoises `latents: [B, C, h, w]` over `sched`'s prepared run (call `set_timesteps` first, on a
/// scheduler that has not stepped since) from `o.start` to the end, and returns the final latents
/// `[B, C, h, w]`. The latents must already be at the noise level of the first step visited
/// (`init_noise_sigma`-scaled noise for a full run). Step noise is drawn from `noise` exactly when
/// diffusers draws it. Sampling records no gradient: every UNet output is detached before the
/// scheduler sees it, so trainable weights cost no more memory than frozen ones after a step.
pub fn denoise(
    unet: &UNet2DConditionModel,
    sched: &mut dyn Scheduler,
    mut latents: Tensor,
    mut o: DenoiseOptions<'_>,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4().map_err(|_| {
        Error::invalid(format!(
            "denoise: latents must be [B, C, h, w], got shape {:?}",
            latents.dims()
        ))
    })?;
    let n_steps = sched.timesteps().len();
    if n_steps == 0 || o.start >= n_steps {
        return Err(Error::invalid(format!(
            "denoise: start index {} is outside the scheduler's run of {n_steps} timesteps (call set_timesteps first)",
            o.start
        )));
    }
    sched.set_begin_index(o.start)?;
    let cfg = uses_cfg(o.guidance);
    let cond = per_row(&o.conditioning.cond, b, "conditioning.cond")?;
    let embeds = if cfg {
        let uncond = o.conditioning.uncond.as_ref().ok_or_else(|| {
            Error::invalid(format!(
                "denoise: guidance scale {} needs unconditional embeddings (Conditioning::uncond)",
                o.guidance
            ))
        })?;
        let uncond = per_row(uncond, b, "conditioning.uncond")?;
        if uncond.dims() != cond.dims() {
            return Err(Error::invalid(format!(
                "denoise: unconditional embeddings {:?} and conditional ones {:?} differ in shape",
                uncond.dims(),
                cond.dims()
            )));
        }
        Tensor::cat(&[&uncond, &cond], 0)?
    } else {
        cond
    };
    let copies = if cfg { 2 } else { 1 };
    let extra = match o.extra {
        Some(e) => {
            if e.rank() != 4 {
                return Err(Error::invalid(format!(
                    "denoise: extra channels must be [B, E, h, w], got shape {:?}",
                    e.dims()
                )));
            }
            let e = per_row(e, b, "extra channels")?;
            let (_, ec, eh, ew) = e.dims4()?;
            if (eh, ew) != (h, w) {
                return Err(Error::invalid(format!(
                    "denoise: extra channels are {ew}x{eh}, the latents {w}x{h}"
                )));
            }
            if c + ec != unet.in_channels() {
                return Err(Error::invalid(format!(
                    "denoise: {c} latent + {ec} extra channels, but the UNet takes {}",
                    unet.in_channels()
                )));
            }
            Some(Tensor::cat(&vec![&e; copies], 0)?)
        }
        None if c != unet.in_channels() => {
            return Err(Error::invalid(format!(
                "denoise: {c} latent channels and no extra channels, but the UNet takes {}",
                unet.in_channels()
            )))
        }
        None => None,
    };
    let mut ctx = o.ctx.clone();
    if let Some(branch) = &ctx.branch {
        if branch.len() != b {
            return Err(Error::invalid(format!(
                "denoise: ctx.branch has {} entries for {b} latent rows",
                branch.len()
            )));
        }
        ctx.branch = Some(branch.repeat(copies));
    }

    let timesteps: Vec<f64> = sched.timesteps()[o.start..].to_vec();
    let total = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let inp = Tensor::cat(&vec![&latents; copies], 0)?;
        let inp = sched.scale_model_input(&inp, t)?;
        let inp = match &extra {
            Some(e) => Tensor::cat(&[&inp, e], 1)?,
            None => inp,
        };
        let tt = Tensor::full(t as f32, copies * b, latents.device())?;
        ctx.timestep = Some(t);
        if let Some(hook) = o.hook.as_mut() {
            hook.before_unet(&StepInput {
                step: i,
                index: o.start + i,
                timestep: t,
                model_input: &inp,
                timesteps: &tt,
                encoder_hidden_states: &embeds,
                ctx: &ctx,
            })?;
        }
        // Detached at once: with trainable weights (LoRA, SAIM, BCM, a model being trained) the
        // output carries the autograd graph of the whole forward, and of a reference pass fused
        // into it; schedulers that keep past outputs (PNDM keeps four) would hold that many
        // forwards' activations alive (18 GB for a 64-px DualAnoDiff batch of 8 pairs).
        let mut pred = unet.forward(&inp, &tt, &embeds, &ctx)?.detach();
        if cfg {
            pred = apply_cfg(&pred, o.guidance)?;
        }
        let step_noise = if sched.needs_noise_at(t) {
            Some(noise.draw(latents.dims(), latents.device())?)
        } else {
            None
        };
        // Sampling never back-propagates: the next step's input carries no graph either.
        latents = sched
            .step(&pred, t, &latents, step_noise.as_ref())?
            .detach();
        if let Some(progress) = o.progress.as_mut() {
            progress(i + 1, total);
        }
    }
    Ok(latents)
}

/// Where partial denoising (img2img, SDEdit, inpainting at `strength` < 1) starts in
/// `Scheduler::timesteps()`, as diffusers' `get_timesteps`: a run of `steps` keeps its last
/// `int(steps · strength)` steps. Every scheduler here has order 1, so the run starts that many
/// steps before the end of the step count (PNDM's list holds one extra, repeated timestep near its
/// start, which the offset skips too). Errors for a strength outside (0, 1] or one that keeps no
/// step (diffusers refuses it too).
pub fn partial_start(steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid(format!(
            "strength must be in (0, 1], got {strength}"
        )));
    }
    let kept = ((steps as f64 * strength) as usize).min(steps);
    if kept == 0 {
        return Err(Error::invalid(format!(
            "strength {strength} keeps none of the {steps} steps (int(steps × strength) must be at least 1)"
        )));
    }
    Ok(steps - kept)
}

/// `x` with `b` rows: as is, or its single row repeated.
fn per_row(x: &Tensor, b: usize, what: &str) -> Result<Tensor> {
    let rows = x.dims().first().copied().unwrap_or(0);
    if rows == b {
        Ok(x.clone())
    } else if rows == 1 && x.rank() >= 2 {
        Ok(Tensor::cat(&vec![x; b], 0)?)
    } else {
        Err(Error::invalid(format!(
            "denoise: {what} has shape {:?}: it needs {b} rows (one per latent row) or 1 (shared)",
            x.dims()
        )))
    }
}
