//! VAE decoder fine-tuning (METHODS.md B.1): `L = ‖x − x̂‖² + β·D(x, x̂)` with `x̂ = decode(E(x))`.
//! Only the decoder learns (weights under `decoder.` and `post_quant_conv.` in the VAE's
//! parameter store); the encoder (and `quant_conv`) is frozen, so every training image is encoded
//! once (posterior mean) and the UNet's latent space does not move. The shared
//! [`Trainer`] gives AdamW, the cosine schedule, checkpoints with exact resume and
//! `train_log.jsonl`.
//!
//! The extra term `D` ([`Perceptual`]):
//! - `none` (the default, with `β = 0`): plain reconstruction MSE. The paper's β and its
//!   perceptual network are unpublished, so nothing is assumed unless the user asks for it;
//! - `gradient`: a weight-free structural term, the L1 distance between Sobel image gradients of
//!   `x` and `x̂` ([`gradient_l1`]). It rewards sharp edges where MSE alone blurs; it is *not* a
//!   learned perceptual metric and is reported under its own name.
//!
//! - `lpips`: the learned perceptual distance LPIPS ([`crate::eval::lpips`], as the paper's
//!   "perceptual" most likely means), only with the AlexNet/VGG16 weights the user supplies
//!   (`lpips_weights`); nothing is downloaded. The network is frozen: only the decoder learns.
//!
//! Pixel-space models have no VAE: [`vae_tune`] refuses them.

use crate::error::{Error, Result};
use crate::eval::lpips::Lpips;
use crate::io::image_tensor::rgb_to_tensor;
use crate::io::json::write_json;
use crate::nn::Params;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::vae::AutoencoderKL;
use crate::train::trainer::{StepStats, TrainConfig, Trainer};
use candle_core::{Tensor, Var};
use image::RgbImage;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name prefixes (in the VAE's parameter store) of the weights that are tuned.
pub const DECODER_PREFIXES: [&str; 2] = ["decoder.", "post_quant_conv."];

/// The extra term of the decoder loss, weighted by β.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perceptual {
    /// No extra term: reconstruction MSE only.
    #[default]
    None,
    /// L1 distance between Sobel image gradients ([`gradient_l1`]); weight-free.
    Gradient,
    /// LPIPS with user-supplied weights ([`VaeTuneOptions::lpips_weights`]).
    Lpips,
}

impl Perceptual {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gradient => "gradient",
            Self::Lpips => "lpips",
        }
    }
}

impl std::fmt::Display for Perceptual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Perceptual {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "gradient" => Ok(Self::Gradient),
            "lpips" => Ok(Self::Lpips),
            other => Err(Error::invalid(format!(
                "unknown decoder loss term `{other}` (none, gradient, or lpips with LPIPS weights)"
            ))),
        }
    }
}

/// What [`vae_tune`] trains.
#[derive(Clone, Debug)]
pub struct VaeTuneOptions {
    /// Optimiser updates (0: only measure the reconstruction error).
    pub steps: usize,
    /// Images per update.
    pub batch: usize,
    /// Peak learning rate (warmup, then cosine to 0).
    pub lr: f64,
    /// Warmup updates.
    pub warmup: usize,
    /// Weight of the extra term (0 with [`Perceptual::None`], > 0 otherwise).
    pub beta: f64,
    /// The extra term.
    pub perceptual: Perceptual,
    /// LPIPS weights (safetensors, see [`crate::eval::lpips`]) for [`Perceptual::Lpips`].
    pub lpips_weights: Option<PathBuf>,
    /// Seed of the data order.
    pub seed: u64,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoint (or tuning folder) to resume from.
    pub resume: Option<PathBuf>,
}

impl Default for VaeTuneOptions {
    fn default() -> Self {
        Self {
            steps: 500,
            batch: 2,
            lr: 1e-5,
            warmup: 20,
            beta: 0.0,
            perceptual: Perceptual::None,
            lpips_weights: None,
            seed: 0,
            checkpoint_every: 250,
            resume: None,
        }
    }
}

impl VaeTuneOptions {
    /// Refuses settings that cannot mean what was asked: a β without a term, a term without a β.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::invalid(
                "VAE decoder tuning: batch must be at least 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!(
                "VAE decoder tuning: learning rate must be positive, got {}",
                self.lr
            )));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::invalid(format!(
                "VAE decoder tuning: β must be finite and >= 0, got {}",
                self.beta
            )));
        }
        match (self.perceptual, &self.lpips_weights) {
            (Perceptual::Lpips, None) => {
                return Err(Error::invalid(
                    "VAE decoder tuning: the lpips term needs LPIPS network weights \
                     (--lpips-weights FILE, see tools/export_lpips_weights.py)",
                ))
            }
            (Perceptual::None | Perceptual::Gradient, Some(p)) => {
                return Err(Error::invalid(format!(
                    "VAE decoder tuning: LPIPS weights {} given but the term is `{}` (use --vae-perceptual lpips)",
                    p.display(),
                    self.perceptual
                )))
            }
            _ => {}
        }
        match (self.perceptual, self.beta > 0.0) {
            (Perceptual::None, true) => Err(Error::invalid(format!(
                "VAE decoder tuning: β = {} but no extra term is chosen (use --vae-perceptual gradient|lpips, or β = 0)",
                self.beta
            ))),
            (Perceptual::Gradient | Perceptual::Lpips, false) => Err(Error::invalid(format!(
                "VAE decoder tuning: the {} term is chosen but β = 0 (give --vae-beta > 0)",
                self.perceptual
            ))),
            _ => Ok(()),
        }
    }
}

/// What [`vae_tune`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VaeTuneReport {
    /// Folder with the tuning's checkpoints, `train_log.jsonl` and `report.json`.
    pub dir: PathBuf,
    /// Training images.
    pub images: usize,
    /// Decoder parameters trained.
    pub trainable_parameters: usize,
    /// The extra term and its weight.
    pub perceptual: Perceptual,
    /// β.
    pub beta: f64,
    /// Reconstruction MSE (pixels in [-1, 1]) over the training images before tuning.
    pub mse_before: f64,
    /// The same after tuning.
    pub mse_after: f64,
    /// Mean Sobel-gradient L1 distance ([`gradient_l1`]) before tuning (always measured).
    pub gradient_l1_before: f64,
    /// The same after tuning.
    pub gradient_l1_after: f64,
    /// Mean LPIPS before tuning (only with the `lpips` term).
    pub lpips_before: Option<f64>,
    /// The same after tuning.
    pub lpips_after: Option<f64>,
    /// Loss of the first update run (NaN when none ran).
    pub first_loss: f64,
    /// Mean loss of the last 20 updates.
    pub last_loss: f64,
    /// Training wall time in seconds.
    pub train_secs: f64,
    /// Figures of every update (not serialised).
    #[serde(skip)]
    pub steps: Vec<StepStats>,
}

/// The decoder's trainable `Var`s in a VAE parameter store, named `vae.<store name>` (the names
/// [`crate::sd::model_params::ModelParams::vars`] gives them).
pub fn decoder_vars(vae_params: &Params) -> Vec<(String, Var)> {
    vae_params
        .vars()
        .into_iter()
        .filter(|(n, _)| DECODER_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(|(n, v)| (format!("vae.{n}"), v))
        .collect()
}

/// Sobel responses `(G_x, G_y)` of `d: [B, C, H, W]` per channel, over the valid
/// `(H − 2) × (W − 2)` interior, divided by 8 so that a ramp of slope s per pixel gives s.
fn sobel(d: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, _, h, w) = d.dims4()?;
    if h < 3 || w < 3 {
        return Err(Error::invalid(format!(
            "Sobel gradients need images of at least 3x3 pixels, got {h}x{w}"
        )));
    }
    // G_x = [1 2 1]ᵀ (rows) ⊗ [-1 0 1] (columns); G_y the transpose.
    let smooth = |t: &Tensor, dim: usize, n: usize| -> Result<Tensor> {
        let a = t.narrow(dim, 0, n - 2)?;
        let b = t.narrow(dim, 1, n - 2)?;
        let c = t.narrow(dim, 2, n - 2)?;
        Ok(((a + c)? + (b * 2.0)?)?)
    };
    let diff = |t: &Tensor, dim: usize, n: usize| -> Result<Tensor> {
        Ok((t.narrow(dim, 2, n - 2)? - t.narrow(dim, 0, n - 2)?)?)
    };
    let gx = (smooth(&diff(d, 3, w)?, 2, h)? / 8.0)?;
    let gy = (smooth(&diff(d, 2, h)?, 3, w)? / 8.0)?;
    Ok((gx, gy))
}

/// The weight-free "gradient" term: `mean|G_x(x̂) − G_x(x)| + mean|G_y(x̂) − G_y(x)|` with the
/// Sobel operators of `sobel` (per channel, valid interior, ÷ 8). Differentiable in both
/// arguments; works in the inputs' dtype.
pub fn gradient_l1(x: &Tensor, x_hat: &Tensor) -> Result<Tensor> {
    if x.dims() != x_hat.dims() {
        return Err(Error::invalid(format!(
            "gradient term: shapes differ ({:?} vs {:?})",
            x.dims(),
            x_hat.dims()
        )));
    }
    // The operators are linear: G(x̂) − G(x) = G(x̂ − x).
    let (gx, gy) = sobel(&(x_hat - x)?)?;
    Ok((gx.abs()?.mean_all()? + gy.abs()?.mean_all()?)?)
}

/// Reconstruction errors over all images (decoded `batch` at a time).
struct Measured {
    mse: f64,
    gradient_l1: f64,
    lpips: Option<f64>,
}

/// Reconstruction MSE, gradient term and (with a network) LPIPS over all images.
fn measure(
    vae: &AutoencoderKL,
    latents: &Tensor,
    images: &[RgbImage],
    batch: usize,
    lpips: Option<&Lpips>,
) -> Result<Measured> {
    let dev = latents.device();
    let (mut mse, mut grad, mut lp) = (0.0, 0.0, 0.0);
    for start in (0..images.len()).step_by(batch) {
        let n = batch.min(images.len() - start);
        let x = batch_tensor(&images[start..start + n], dev)?;
        let y = vae.decode(&latents.narrow(0, start, n)?)?.detach();
        mse += (&y - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64 * n as f64;
        grad += gradient_l1(&x, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        if let Some(net) = lpips {
            lp += net.distance(&x, &y)?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let n = images.len() as f64;
    Ok(Measured {
        mse: mse / n,
        gradient_l1: grad / n,
        lpips: lpips.map(|_| lp / n),
    })
}

fn batch_tensor(images: &[RgbImage], dev: &candle_core::Device) -> Result<Tensor> {
    let xs = images
        .iter()
        .map(|i| rgb_to_tensor(i, dev))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&xs, 0)?)
}

/// Fine-tunes `sd`'s VAE decoder on `images` (all the same size, a multiple of the VAE factor;
/// the caller resizes them to the training size). `vae_params` is the store `sd.vae` was built
/// from; its decoder weights must be trainable `Var`s (a fresh preset store, or
/// [`StableDiffusion::load_trainable`]): they are updated in place, so `sd` decodes with the
/// tuned weights afterwards and `StableDiffusion::save` writes them. `out` receives the tuning's
/// checkpoints, `train_log.jsonl` and `report.json`.
pub fn vae_tune(
    sd: &StableDiffusion,
    vae_params: &Params,
    images: &[RgbImage],
    out: &Path,
    o: &VaeTuneOptions,
    progress: impl FnMut(&StepStats) + 'static,
) -> Result<VaeTuneReport> {
    o.validate()?;
    let Some(vae) = sd.vae.as_ref() else {
        return Err(Error::invalid(
            "VAE decoder tuning needs a latent-space model; this is a pixel-space model (it has no VAE)",
        ));
    };
    let Some(first) = images.first() else {
        return Err(Error::invalid("VAE decoder tuning: no training images"));
    };
    if let Some(i) = images
        .iter()
        .position(|i| i.dimensions() != first.dimensions())
    {
        return Err(Error::invalid(format!(
            "VAE decoder tuning: image {i} is {:?}, image 0 is {:?}; resize them to one training size",
            images[i].dimensions(),
            first.dimensions()
        )));
    }
    let vars = decoder_vars(vae_params);
    if vars.is_empty() {
        return Err(Error::invalid(
            "VAE decoder tuning: the VAE's decoder weights are not trainable (load the model with \
             StableDiffusion::load_trainable, or build it from a fresh preset store)",
        ));
    }
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let dev = sd.device.clone();

    // The frozen encoder, once: unscaled posterior means, detached from any graph.
    let mut lat = Vec::with_capacity(images.len());
    for chunk in images.chunks(o.batch) {
        let x = batch_tensor(chunk, &dev)?;
        lat.push(vae.encode_checked(&x)?.mean.detach());
    }
    let latents = Tensor::cat(&lat, 0)?;
    drop(lat);
    let lpips = match (o.perceptual, &o.lpips_weights) {
        (Perceptual::Lpips, Some(p)) => Some(Lpips::load(p, &dev)?),
        _ => None,
    };
    let before = measure(vae, &latents, images, o.batch, lpips.as_ref())?;

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg = TrainConfig {
        batch_size: o.batch,
        seed: o.seed,
        checkpoint_every: o.checkpoint_every,
        out_dir: Some(out.to_path_buf()),
        ..TrainConfig::cosine(o.steps, o.lr, o.warmup)
    };
    let mut trainer = Trainer::new(cfg, vars, images.len())?.with_metadata(json!({
        "job": "vae-decoder-tune", "images": images.len(),
        "size": [first.height(), first.width()],
        "beta": o.beta, "term": o.perceptual,
    }));
    if let Some(dir) = &o.resume {
        trainer.resume(dir)?;
    }
    trainer.on_progress(progress);
    let t0 = Instant::now();
    let steps = trainer.run(|batch| {
        let ids: Vec<u32> = batch.indices.iter().map(|&i| i as u32).collect();
        let z = latents.index_select(&Tensor::new(ids.as_slice(), &dev)?, 0)?;
        let picked: Vec<RgbImage> = batch.indices.iter().map(|&i| images[i].clone()).collect();
        let x = batch_tensor(&picked, &dev)?;
        let x_hat = vae.decode(&z)?;
        let mse = (&x_hat - &x)?.sqr()?.mean_all()?;
        match o.perceptual {
            Perceptual::None => Ok(mse),
            Perceptual::Gradient => Ok((mse + (gradient_l1(&x, &x_hat)? * o.beta)?)?),
            Perceptual::Lpips => {
                let net = lpips.as_ref().expect("loaded for the lpips term");
                Ok((mse + (net.distance(&x, &x_hat)?.mean_all()? * o.beta)?)?)
            }
        }
    })?;
    let train_secs = t0.elapsed().as_secs_f64();
    let after = measure(vae, &latents, images, o.batch, lpips.as_ref())?;
    let tail = &steps[steps.len().saturating_sub(20)..];
    let report = VaeTuneReport {
        dir: out.to_path_buf(),
        images: images.len(),
        trainable_parameters,
        perceptual: o.perceptual,
        beta: o.beta,
        mse_before: before.mse,
        mse_after: after.mse,
        gradient_l1_before: before.gradient_l1,
        gradient_l1_after: after.gradient_l1,
        lpips_before: before.lpips,
        lpips_after: after.lpips,
        first_loss: steps.first().map_or(f64::NAN, |s| s.loss),
        last_loss: tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64,
        train_secs,
        steps,
    };
    write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{render_good, Category};
    use crate::sd::presets::Preset;
    use candle_core::{DType, Device};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Frozen weights (encoder, quant_conv) by name.
    fn frozen(p: &Params) -> Vec<(String, Vec<f32>)> {
        p.vars()
            .into_iter()
            .filter(|(n, _)| !DECODER_PREFIXES.iter().any(|d| n.starts_with(d)))
            .map(|(n, v)| (n, values(v.as_tensor())))
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("anodiff-vae-tune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn tuning_the_tiny_decoder_lowers_the_reconstruction_error_and_only_moves_the_decoder() {
        let dev = Device::Cpu;
        let preset = Preset::by_name("tiny").unwrap();
        let (sd, params) = StableDiffusion::from_preset_with_params(&preset, 3, &dev).unwrap();
        let vp = params.vae.clone().expect("tiny has a VAE");
        let images: Vec<RgbImage> = (0..6)
            .map(|i| render_good(Category::ALL[i % 2], 32, i as u64))
            .collect();
        let enc_before = frozen(&vp);
        assert!(enc_before.iter().any(|(n, _)| n.starts_with("encoder.")));
        assert!(enc_before.iter().any(|(n, _)| n.starts_with("quant_conv.")));
        let dec_before: Vec<(String, Vec<f32>)> = decoder_vars(&vp)
            .iter()
            .map(|(n, v)| (n.clone(), values(v.as_tensor())))
            .collect();
        assert!(dec_before
            .iter()
            .any(|(n, _)| n.starts_with("vae.post_quant_conv.")));
        let out = scratch("tiny");
        let o = VaeTuneOptions {
            steps: 30,
            batch: 3,
            lr: 2e-3,
            warmup: 3,
            beta: 0.1,
            perceptual: Perceptual::Gradient,
            checkpoint_every: 0,
            ..Default::default()
        };
        let r = vae_tune(&sd, &vp, &images, &out, &o, |_| {}).unwrap();
        eprintln!(
            "tiny decoder, {} params, 30 steps: MSE {:.4} -> {:.4}, gradient L1 {:.4} -> {:.4}, loss {:.4} -> {:.4}, {:.1} s",
            r.trainable_parameters,
            r.mse_before,
            r.mse_after,
            r.gradient_l1_before,
            r.gradient_l1_after,
            r.first_loss,
            r.last_loss,
            r.train_secs
        );
        assert_eq!(r.steps.len(), 30);
        assert!(
            r.mse_after < 0.5 * r.mse_before,
            "{} -> {}",
            r.mse_before,
            r.mse_after
        );
        // Encoder and quant_conv bit-identical; the decoder moved.
        assert_eq!(frozen(&vp), enc_before);
        let dec_after = decoder_vars(&vp);
        let moved = dec_before
            .iter()
            .zip(&dec_after)
            .filter(|((_, a), (_, v))| *a != values(v.as_tensor()))
            .count();
        assert!(
            moved > dec_before.len() / 2,
            "{moved} of {} moved",
            dec_before.len()
        );
        // The model itself decodes with the tuned weights (they are the store's Vars).
        let x = rgb_to_tensor(&images[0], &dev).unwrap();
        let vae = sd.vae.as_ref().unwrap();
        let y = vae.decode(&vae.encode(&x).unwrap().mean).unwrap();
        let mse = (y - x)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((mse as f64) < r.mse_before, "{mse}");
        assert!(out.join("train_log.jsonl").is_file());
        assert!(out.join("report.json").is_file());
        assert!(crate::train::checkpoint::latest(&out).is_some());
        // Resuming the finished tuning runs no more updates and restores the same weights.
        let r2 = vae_tune(
            &sd,
            &vp,
            &images,
            &out,
            &VaeTuneOptions {
                resume: Some(out.clone()),
                ..o.clone()
            },
            |_| {},
        )
        .unwrap();
        assert!(r2.steps.is_empty());
        assert!((r2.mse_after - r.mse_after).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn gradient_term_matches_finite_differences() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 6, 7), &dev).unwrap();
        let y0 = Tensor::randn(0f64, 1.0, (2, 3, 6, 7), &dev).unwrap();
        let y = Var::from_tensor(&y0).unwrap();
        let loss = gradient_l1(&x, y.as_tensor()).unwrap();
        assert_eq!(loss.dtype(), DType::F64);
        let g = loss.backward().unwrap();
        let g = g
            .get(y.as_tensor())
            .expect("a gradient reaches x̂")
            .flatten_all()
            .unwrap();
        let g = g.to_vec1::<f64>().unwrap();
        let base = y0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let at = |v: &[f64]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), (2, 3, 6, 7), &dev).unwrap();
            gradient_l1(&x, &t).unwrap().to_scalar::<f64>().unwrap()
        };
        let eps = 1e-6;
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        // Corners, edges and interior elements of several channels.
        for i in [0, 1, 5, 6, 20, 43, 44, 100, 151, 200, 251] {
            let mut p = base.clone();
            p[i] += eps;
            let mut m = base.clone();
            m[i] -= eps;
            let num = (at(&p) - at(&m)) / (2.0 * eps);
            let tol = 1e-7 + 1e-5 * num.abs().max(0.01 * scale);
            assert!(
                (g[i] - num).abs() <= tol,
                "element {i}: autograd {} vs numeric {num}",
                g[i]
            );
        }
    }

    #[test]
    fn gradient_term_of_a_ramp_is_its_slope() {
        let dev = Device::Cpu;
        let (h, w) = (5usize, 8usize);
        let ramp: Vec<f32> = (0..3 * h * w).map(|i| 0.25 * (i % w) as f32).collect();
        let ramp = Tensor::from_vec(ramp, (1, 3, h, w), &dev).unwrap();
        let zero = ramp.zeros_like().unwrap();
        let v = gradient_l1(&zero, &ramp)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((v - 0.25).abs() < 1e-6, "{v}");
        let v = gradient_l1(&ramp.t().unwrap().contiguous().unwrap(), &zero.t().unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((v - 0.25).abs() < 1e-6, "{v}");
        assert_eq!(
            gradient_l1(&ramp, &ramp)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(gradient_l1(&zero, &zero.narrow(3, 0, 4).unwrap()).is_err());
    }

    #[test]
    fn pixel_space_models_and_unmeant_settings_are_refused() {
        let dev = Device::Cpu;
        let preset = Preset::by_name("tiny-pixel").unwrap();
        let (sd, params) = StableDiffusion::from_preset_with_params(&preset, 0, &dev).unwrap();
        assert!(params.vae.is_none());
        let images = vec![render_good(Category::Capsule, 32, 0)];
        let e = vae_tune(
            &sd,
            &params.unet,
            &images,
            &scratch("pixel"),
            &VaeTuneOptions::default(),
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("pixel-space"), "{e}");

        let beta_only = VaeTuneOptions {
            beta: 0.1,
            ..Default::default()
        };
        assert!(beta_only
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no extra term"));
        let term_only = VaeTuneOptions {
            perceptual: Perceptual::Gradient,
            ..Default::default()
        };
        assert!(term_only.validate().is_err());
        assert!(VaeTuneOptions::default().validate().is_ok());
        assert_eq!(
            "gradient".parse::<Perceptual>().unwrap(),
            Perceptual::Gradient
        );
        assert_eq!("lpips".parse::<Perceptual>().unwrap(), Perceptual::Lpips);
        assert!("vgg".parse::<Perceptual>().is_err());
        // lpips needs weights; weights need the lpips term.
        let no_weights = VaeTuneOptions {
            perceptual: Perceptual::Lpips,
            beta: 0.1,
            ..Default::default()
        };
        let e = no_weights.validate().unwrap_err().to_string();
        assert!(e.contains("--lpips-weights"), "{e}");
        let stray = VaeTuneOptions {
            perceptual: Perceptual::Gradient,
            beta: 0.1,
            lpips_weights: Some(PathBuf::from("w.safetensors")),
            ..Default::default()
        };
        let e = stray.validate().unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("gradient"), "{e}");
        assert_eq!(
            serde_json::to_string(&Perceptual::Gradient).unwrap(),
            "\"gradient\""
        );

        // A frozen VAE store (a model loaded without trainable weights) is refused clearly.
        let preset = Preset::by_name("tiny").unwrap();
        let frozen = crate::sd::presets::fresh_params(0, crate::sd::presets::Component::Vae, &dev)
            .with_trainable(|_| false);
        let sd = StableDiffusion::from_preset(&preset, 0, &dev).unwrap();
        let e = vae_tune(
            &sd,
            &frozen,
            &images,
            &scratch("frozen"),
            &VaeTuneOptions::default(),
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("not trainable"), "{e}");
    }
}
