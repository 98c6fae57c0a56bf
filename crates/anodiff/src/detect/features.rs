//! Patch features from our own diffusion UNet, so prototype guidance and the nearest-neighbour
//! baseline need no external weights: the image is noised lightly (timestep `t`, fixed noise),
//! run through the UNet once, and the inputs of the self-attention layers on the finest attention
//! grid are recorded by an observer in the pass's context (the UNet's processors are not touched,
//! so an installed LoRA keeps working and passes on other threads are unaffected). Each layer's patch
//! vectors are L2-normalised (so layers weigh alike), concatenated, and averaged over a 3 × 3
//! neighbourhood (PatchCore's local aggregation).
//!
//! For an inpainting UNet the extra channels say "nothing masked": mask 0 and the whole image as
//! the masked-image input.

use crate::error::{Error, Result};
use crate::sd::attention::{AttnCall, AttnKind, AttnObserver, Observer, PassKind};
use crate::sd::noise::{NoiseSource, SeededNoise};
use crate::sd::pipeline::StableDiffusion;
use crate::sd::scheduler::schedule::NoiseSchedule;
use candle_core::{Tensor, D};
use std::sync::{Arc, Mutex};

/// How features are taken.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureOptions {
    /// Diffusion timestep the image is noised to (small: the features describe the image itself).
    pub timestep: usize,
    /// Seed of the (shared) noise.
    pub seed: u64,
    /// Side of the local averaging window over patches (1 = none).
    pub pool: usize,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        Self {
            timestep: 100,
            seed: 0,
            pool: 3,
        }
    }
}

/// One recorded layer input: layer name, token grid (h, w), hidden states `[N, h·w, C]`.
type Taken = (String, (usize, usize), Tensor);

/// Records the input hidden states of self-attention layers in main passes.
#[derive(Default)]
struct Recorder {
    taken: Mutex<Vec<Taken>>,
}

impl AttnObserver for Recorder {
    fn observe(&self, call: &AttnCall, hidden: &Tensor, _out: &Tensor) -> Result<()> {
        if call.layer.kind == AttnKind::SelfAttn && call.ctx.pass == PassKind::Main {
            if let Some(hw) = call.hw {
                self.taken.lock().expect("recorder lock").push((
                    call.layer.name.clone(),
                    hw,
                    hidden.detach(),
                ));
            }
        }
        Ok(())
    }
}

/// Patch features `[N, C, h, w]` of `images: [N, 3, H, W]` in [-1, 1] (`text: [1, S, D]`, the
/// category's prompt embedding), on the UNet's finest self-attention grid.
pub fn unet_features(
    sd: &StableDiffusion,
    images: &Tensor,
    text: &Tensor,
    o: &FeatureOptions,
) -> Result<Tensor> {
    let n = images.dim(0)?;
    let x0 = sd.encode_mean(images)?;
    let schedule = NoiseSchedule::new(&sd.scheduler_config)?;
    if o.timestep >= schedule.num_train_timesteps() {
        return Err(Error::invalid(format!(
            "feature timestep {} is outside the schedule (0..{})",
            o.timestep,
            schedule.num_train_timesteps()
        )));
    }
    let (_, c, h, w) = x0.dims4()?;
    let noise = SeededNoise::new(o.seed)
        .draw(&[1, c, h, w], &sd.device)?
        .repeat((n, 1, 1, 1))?;
    let xt = schedule.add_noise(&x0, &noise, &vec![o.timestep; n])?;
    let input = if sd.unet.in_channels() == 2 * c + 1 {
        let zero = Tensor::zeros((n, 1, h, w), x0.dtype(), &sd.device)?;
        Tensor::cat(&[&xt, &zero, &x0], 1)?
    } else {
        xt
    };
    // The recorder rides on this pass's context: the model's processors (an installed LoRA
    // among them) stay as they are, and passes on other threads are not recorded.
    let rec = Arc::new(Recorder::default());
    let ts = Tensor::from_vec(vec![o.timestep as f32; n], n, &sd.device)?;
    let ctx = crate::sd::attention::ForwardCtx {
        observer: Some(Observer(rec.clone())),
        ..Default::default()
    };
    sd.unet
        .forward(&input, &ts, &text.repeat((n, 1, 1))?, &ctx)?;
    let taken = std::mem::take(&mut *rec.taken.lock().expect("recorder lock"));
    let finest = taken
        .iter()
        .map(|(_, (h, w), _)| h * w)
        .max()
        .ok_or_else(|| {
            Error::invalid("the UNet has no self-attention layers to take features from")
        })?;
    let mut parts = Vec::new();
    for (_, (fh, fw), t) in taken.iter().filter(|(_, (h, w), _)| h * w == finest) {
        // [N, T, C] → unit vectors per patch → [N, C, h, w].
        let norm = t
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-6f32, f32::MAX)?;
        let u = t.broadcast_div(&norm)?;
        parts.push(u.transpose(1, 2)?.reshape((n, (), *fh, *fw))?);
    }
    let f = Tensor::cat(&parts, 1)?.contiguous()?;
    if o.pool > 1 {
        let pad = o.pool / 2;
        let p = f.pad_with_same(2, pad, pad)?.pad_with_same(3, pad, pad)?;
        Ok(p.avg_pool2d_with_stride((o.pool, o.pool), (1, 1))?)
    } else {
        Ok(f)
    }
}
