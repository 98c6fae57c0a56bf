//! How a pretraining run is judged: the denoising loss on held-out images at fixed timesteps and
//! noise (comparable across models and runs), and a few sampled images for the grid.

use super::diffusion::DiffusionLoss;
use crate::error::Result;
use crate::io::image_tensor::tensor_to_rgb;
use crate::sd::attention::ForwardCtx;
use crate::sd::noise::{NoiseSource, SeededNoise};
use crate::sd::pipeline::{SampleOptions, StableDiffusion};
use crate::sd::scheduler::SchedulerKind;
use candle_core::Tensor;

/// Timesteps of the held-out denoising loss.
pub const HELD_OUT_T: [usize; 3] = [100, 500, 900];

/// Mean ε-MSE over `test` at each of [`HELD_OUT_T`], with noise from a fixed seed (the same for
/// every model, so runs are comparable).
pub fn held_out_loss(
    sd: &StableDiffusion,
    loss: &DiffusionLoss,
    test: &[Tensor],
    prompt: &str,
    seed: u64,
) -> Result<Vec<(usize, f64)>> {
    if test.is_empty() {
        return Ok(Vec::new());
    }
    let x0 = Tensor::cat(test, 0)?;
    let n = x0.dim(0)?;
    let noise = SeededNoise::new(seed ^ 0x004E_015E).draw(x0.dims(), x0.device())?;
    let txt = sd.encode_text(&[prompt])?;
    let ctx = ForwardCtx::default();
    // In chunks: one forward over the whole test set (190 images for MTD) held GBs of activations.
    const CHUNK: usize = 16;
    HELD_OUT_T
        .iter()
        .map(|&t| {
            let mut sum = 0.0;
            for start in (0..n).step_by(CHUNK) {
                let len = CHUNK.min(n - start);
                let x = x0.narrow(0, start, len)?;
                let e = noise.narrow(0, start, len)?;
                let c = txt.repeat((len, 1, 1))?;
                let l = loss
                    .loss(&sd.unet, &x, &c, &e, &vec![t; len], &ctx)?
                    .detach();
                // The loss is a mean over the chunk; weight it by the chunk's share.
                sum += l.to_scalar::<f32>()? as f64 * len as f64;
            }
            Ok((t, sum / n as f64))
        })
        .collect()
}

/// `n` images from the model's own scheduler config with DDIM, no guidance (the model was
/// trained with one prompt, so there is no unconditional branch); sample `i` seeded `seed + i`.
pub fn sample_images(
    sd: &StableDiffusion,
    prompt: &str,
    n: usize,
    size: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<image::RgbImage>> {
    let opts = SampleOptions {
        prompt: prompt.into(),
        steps,
        guidance: 1.0,
        width: Some(size),
        height: Some(size),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut noise = SeededNoise::new(seed.wrapping_add(i));
        let x = sd.txt2img(&opts, &mut noise, &mut |_, _| {})?;
        out.extend(tensor_to_rgb(&sd.decode(&x)?)?);
    }
    Ok(out)
}
