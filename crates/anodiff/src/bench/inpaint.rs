//! `anodiff bench inpaint`: one partial-inpainting denoising step of AnomalySD's multi-scale branch
//! (a batch of grid-cell masks over one image) with random weights — no files needed — timed as
//! the median of several runs after a warm-up.
//!
//! The timed step is one iteration of the public loop [`denoise`], as
//! [`StableDiffusion::inpaint_batch`] drives it for AnomalySD (DDIM with eta 0, guidance 1, so no
//! CFG copy): the 9-channel UNet input `[z_t; mask; masked-image latents]` of `B` masks, the UNet
//! forward, the DDIM step. The scheduler is prepared for AnomalySD's default 20 steps and the loop
//! starts at the last one, so exactly one step runs (timing does not depend on the timestep).
//!
//! The rest of an inpainting call is timed separately, each with its own warm-up, so that a
//! call's cost can be put together from the parts (`text_encode + vae_encode + λ·T × inpaint_step
//! + vae_decode`) and the step is compared alone:
//! - `text_encode`: the prompt through the text encoder (every call encodes it; guidance 1 = one row);
//! - `vae_encode`: the image (1 row) and the `B` masked images through the VAE encoder, posterior
//!   sampled and scaled, as `inpaint_batch` does per call;
//! - `vae_decode`: the `B` step outputs through the VAE decoder.
//!
//! Latent-space models only run the VAE parts (pixel-space presets have no VAE); `vae: false`
//! skips them and draws the latents from a normal distribution instead. `peak_rss_mb` is the
//! process peak over every phase run. `tools/bench_reference.py inpaint` runs the same phases with
//! diffusers and reports the same keys.

use super::{median_ms, peak_rss_mb};
use crate::detect::masks::{cell_mask, grid_cells};
use crate::error::{Error, Result};
use crate::sd::denoise::{denoise, Conditioning, DenoiseOptions};
use crate::sd::noise::SeededNoise;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::presets::Preset;
use crate::sd::scheduler::{make_scheduler, Scheduler, SchedulerKind};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

/// Scheduler steps of a full run the timed step belongs to (AnomalySD's default; the loop runs
/// only the last one).
pub const STEPS: usize = 20;

/// Grid scales whose cells, in order, give the batch's masks (AnomalySD's default scales; the
/// first batch of 4 is the 2 × 2 grid). A batch larger than their 84 cells starts over.
pub const MASK_SCALES: [usize; 3] = [2, 4, 8];

/// The prompt encoded by `text_encode` (its length does not matter: CLIP always sees 77 tokens).
pub const PROMPT: &str = "a photo of a bottle";

/// What `anodiff bench inpaint` times.
#[derive(Clone, Debug)]
pub struct InpaintBenchOptions {
    /// Preset name (see [`Preset::by_name`]). An inpainting preset is used as it is; a
    /// text-to-image one is turned into its inpainting variant (UNet input channels 2C + 1, as
    /// SD-1.5-inpainting is SD-1.5 with a 9-channel `conv_in`).
    pub preset: String,
    /// Image side in pixels.
    pub size: usize,
    /// Masks (inpaintings) per batch.
    pub batch: usize,
    /// Timed runs of each phase after one warm-up run.
    pub repeats: usize,
    /// Run and time the VAE encode / decode (latent-space models); `false` draws the latents
    /// from a normal distribution and leaves the VAE idle.
    pub vae: bool,
}

/// Result of [`bench_inpaint`], serialised with the keys `tools/bench_reference.py inpaint` uses.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InpaintBenchResult {
    /// Preset name as given.
    pub preset: String,
    /// Image side in pixels.
    pub size: usize,
    /// Masks per batch.
    pub batch: usize,
    /// Timed runs of each phase (at least one).
    pub repeats: usize,
    /// Worker threads of the numeric kernels.
    pub threads: usize,
    /// The timestep of the timed step.
    pub timestep: f64,
    /// Parameter count of the (9-channel) UNet.
    pub parameters: usize,
    /// Parameter count of the VAE (absent for pixel-space models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_params: Option<usize>,
    /// Parameter count of the text encoder.
    pub text_params: usize,
    /// Median milliseconds of one denoising step of the batch (UNet forward + DDIM step, through
    /// [`denoise`]).
    pub inpaint_step: f64,
    /// Median milliseconds of encoding the prompt.
    pub text_encode: f64,
    /// Median milliseconds of the VAE encodes of one call: the image and the `B` masked images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_encode: Option<f64>,
    /// Median milliseconds of decoding the `B` step outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_decode: Option<f64>,
    /// Peak resident set size of the process in MiB.
    pub peak_rss_mb: f64,
}

/// The preset as an inpainting model: unchanged if its UNet already takes `2C + 1` channels,
/// widened if it takes `C` (a text-to-image preset); an error otherwise.
pub fn inpainting_preset(name: &str) -> Result<Preset> {
    let mut p = Preset::by_name(name)?;
    let c = if p.pixel_space {
        3
    } else {
        p.vae.latent_channels
    };
    if p.unet.in_channels == c {
        p.unet.in_channels = 2 * c + 1;
    } else if p.unet.in_channels != 2 * c + 1 {
        return Err(Error::invalid(format!(
            "bench inpaint: preset `{name}` has a UNet with {} input channels; expected {c} \
             (text-to-image) or {} (inpainting)",
            p.unet.in_channels,
            2 * c + 1
        )));
    }
    Ok(p)
}

/// The first `b` masks `[b, 1, size, size]` of the cells of [`MASK_SCALES`] (cycled when `b`
/// exceeds their count): the batch AnomalySD's multi-scale branch runs.
pub fn cell_masks(b: usize, size: usize, dev: &Device) -> Result<Tensor> {
    let mut cells = Vec::new();
    for k in MASK_SCALES {
        cells.extend(grid_cells(k, size, size)?);
    }
    let mut data = Vec::with_capacity(b * size * size);
    for i in 0..b {
        data.extend(cell_mask(&cells[i % cells.len()], size, size));
    }
    Ok(Tensor::from_vec(data, (b, 1, size, size), dev)?)
}

/// Runs `f` once to warm up, then `runs` times, returning the median milliseconds and the last
/// result; `progress` gets a line per run.
fn timed<T>(
    what: &str,
    runs: usize,
    progress: &mut dyn FnMut(&str),
    mut f: impl FnMut() -> Result<T>,
) -> Result<(f64, T)> {
    progress(&format!("{what}: warm-up"));
    let mut out = f()?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        progress(&format!("{what}: run {}/{runs}", i + 1));
        let t0 = Instant::now();
        out = f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median_ms(&mut times), out))
}

/// Errors unless every value of `t` is finite (a random-weight model that overflows would time
/// something other than the real computation).
fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let bad = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count();
    if bad > 0 {
        return Err(Error::invalid(format!(
            "bench inpaint: {what} has {bad} non-finite values"
        )));
    }
    Ok(())
}

/// Builds the preset's inpainting model with frozen random weights and times one inpainting step
/// of a batch of cell masks, plus the text encode and VAE encode / decode of such a call;
/// `progress` receives one line per phase.
pub fn bench_inpaint(
    o: &InpaintBenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<InpaintBenchResult> {
    let dev = Device::Cpu;
    let preset = inpainting_preset(&o.preset)?;
    let f = preset.downscale_factor();
    if o.batch == 0 || o.size < 8 || !o.size.is_multiple_of(f) {
        return Err(Error::invalid(format!(
            "bench inpaint: need at least one mask and a size of at least 8 divisible by {f}"
        )));
    }
    progress("building random weights");
    let sd = StableDiffusion::from_preset_frozen(&preset, 0, &dev)?;
    let counts = preset.parameter_counts()?;
    let (b, s, runs) = (o.batch, o.size, o.repeats.max(1));
    let (c, lat) = (sd.sample_channels(), s / f);
    let image = Tensor::rand(-1f32, 1.0, (1, 3, s, s), &dev)?;
    let masks = cell_masks(b, s, &dev)?;
    let keep = masks.lt(0.5)?.to_dtype(DType::F32)?;
    let masked = image.broadcast_mul(&keep)?;

    let (text_ms, cond) = timed("text encode", runs, progress, || sd.encode_text(&[PROMPT]))?;
    let cond = Conditioning::new(cond);

    // The image latents and the masked-image latents, as inpaint_batch encodes them per call.
    let vae = sd.vae.as_ref().filter(|_| o.vae);
    let (encode_ms, (z0, masked_lat)) = match vae {
        Some(v) => {
            let sample = |x: &Tensor| -> Result<Tensor> {
                let post = v.encode(x)?;
                let eps = post.mean.randn_like(0.0, 1.0)?;
                Ok(v.scale_latent(&post.sample(&eps)?)?)
            };
            let (ms, z) = timed("VAE encode", runs, progress, || {
                Ok((sample(&image)?, sample(&masked)?))
            })?;
            (Some(ms), z)
        }
        None if sd.is_pixel_space() => (None, (image.clone(), masked.clone())),
        None => (
            None,
            (
                Tensor::randn(0f32, 1.0, (1, c, lat, lat), &dev)?,
                Tensor::randn(0f32, 1.0, (b, c, lat, lat), &dev)?,
            ),
        ),
    };

    // The step's inputs, prepared as inpaint_batch prepares them.
    let make_sched = || -> Result<Box<dyn Scheduler>> {
        let mut sched = make_scheduler(SchedulerKind::Ddim, &sd.scheduler_config, 0.0)?;
        sched.set_timesteps(STEPS)?;
        Ok(sched)
    };
    let start = STEPS - 1;
    let sched = make_sched()?;
    let t0 = sched.timesteps()[start];
    let n = Tensor::randn(0f32, 1.0, (1, c, lat, lat), &dev)?;
    let latents = sched.add_noise_at(&z0, &n, &[t0])?.repeat((b, 1, 1, 1))?;
    let rows = Tensor::arange_step(0u32, s as u32, f as u32, &dev)?;
    let mask_lat = masks.index_select(&rows, 2)?.index_select(&rows, 3)?;
    let extra = Tensor::cat(&[&mask_lat, &masked_lat], 1)?;

    let mut noise = SeededNoise::new(0);
    let (step_ms, out) = timed("inpainting step", runs, progress, || {
        let mut sched = make_sched()?;
        let opts = DenoiseOptions {
            extra: Some(&extra),
            start,
            guidance: 1.0,
            ..DenoiseOptions::new(&cond)
        };
        denoise(&sd.unet, sched.as_mut(), latents.clone(), opts, &mut noise)
    })?;
    check_finite(&out, "the step's output")?;

    let decode_ms = match vae {
        Some(_) => Some(timed("VAE decode", runs, progress, || sd.decode(&out))?.0),
        None => None,
    };
    Ok(InpaintBenchResult {
        preset: o.preset.clone(),
        size: s,
        batch: b,
        repeats: runs,
        threads: rayon::current_num_threads(),
        timestep: t0,
        parameters: counts.unet,
        vae_params: (!preset.pixel_space).then_some(counts.vae),
        text_params: counts.text_encoder,
        inpaint_step: step_ms,
        text_encode: text_ms,
        vae_encode: encode_ms,
        vae_decode: decode_ms,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every phase runs on the tiny preset (turned into its inpainting variant).
    #[test]
    fn tiny_step_runs() {
        let o = InpaintBenchOptions {
            preset: "tiny".into(),
            size: 32,
            batch: 2,
            repeats: 1,
            vae: true,
        };
        let r = bench_inpaint(&o, &mut |_| {}).unwrap();
        assert_eq!((r.repeats, r.batch), (1, 2));
        assert!(r.inpaint_step.is_finite() && r.text_encode.is_finite());
        assert!(r.vae_encode.is_some() && r.vae_decode.is_some());
        assert!(r.parameters > 0 && r.text_params > 0 && r.vae_params.unwrap() > 0);
        // Leading spacing with steps_offset 1: the last of 20 steps is timestep 1.
        assert_eq!(r.timestep, 1.0);
        let no_vae = InpaintBenchOptions { vae: false, ..o };
        let r = bench_inpaint(&no_vae, &mut |_| {}).unwrap();
        assert!(r.vae_encode.is_none() && r.vae_decode.is_none());
    }

    #[test]
    fn masks_are_cells_in_order() {
        let m = cell_masks(5, 8, &Device::Cpu).unwrap();
        assert_eq!(m.dims(), &[5, 1, 8, 8]);
        // The first four are the 2 × 2 grid (16 pixels each), the fifth a 4 × 4 cell (4 pixels).
        let sums = m.sum((1, 2, 3)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(sums, vec![16.0, 16.0, 16.0, 16.0, 4.0]);
        assert!(inpainting_preset("sd15").unwrap().unet.in_channels == 9);
        assert!(inpainting_preset("sd15-inpaint").unwrap().unet.in_channels == 9);
    }
}
