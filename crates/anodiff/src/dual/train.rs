//! DualAnoDiff training (METHODS.md A.2–A.5) on the shared [`Trainer`]: per micro-batch, pairs
//! (whole image, anomaly part) are encoded, interleaved `[whole_0, part_0, whole_1, part_1, …]`,
//! noised with one timestep per pair and independent noise per row, and the noise-prediction MSE
//! is taken over both branches with equal weight. With BCM, each pair's background image is
//! noised to the pair's timestep (independent noise) and run through the reference pass first.
//!
//! The trainable variables are the two UNet LoRA sets, the text-encoder LoRA (the prompts are
//! re-encoded every step, so its gradient flows), SAIM and BCM; the base model stays frozen.

use super::model::{DualModel, ReferenceInput, PART, WHOLE};
use super::pairs::{interleave, PairBatch, PairSampler};
use crate::error::{Error, Result};
use crate::nn::params::gaussian;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::scheduler::NoiseSchedule;
use crate::train::trainer::{Batch, StepStats, Trainer};
use candle_core::{DType, Device, Tensor};
use rand::Rng;

/// Where training pairs come from (the pair dataset; tests use synthetic ones). `Sync`: the
/// micro-batches of an update may be drawn on several threads at once.
pub trait PairBatches: Sync {
    /// Number of distinct training pairs.
    fn len(&self) -> usize;
    /// True when there is no pair.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pairs `indices`, augmented with draws that depend only on `seed`.
    fn batch(&self, indices: &[usize], seed: u64, device: &Device) -> Result<PairBatch>;
}

impl PairBatches for PairSampler {
    fn len(&self) -> usize {
        PairSampler::len(self)
    }
    fn batch(&self, indices: &[usize], seed: u64, device: &Device) -> Result<PairBatch> {
        PairSampler::batch(self, indices, seed, device)
    }
}

/// The per-step inputs of a training loss, built from a [`PairBatch`]; exposed so tests and
/// benchmarks run exactly the training computation.
pub struct DualLoss<'a> {
    sd: &'a StableDiffusion,
    model: &'a DualModel,
    schedule: NoiseSchedule,
    whole_ids: Tensor,
    part_ids: Tensor,
    empty_ids: Tensor,
    prompt_dropout: f64,
    mask_weight: f64,
}

/// Loss settings beyond the paper's plain MSE; the defaults are the paper's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSettings {
    /// See [`DualLoss::with_prompt_dropout`].
    pub prompt_dropout: f64,
    /// See [`DualLoss::with_mask_weight`].
    pub mask_weight: f64,
}

impl<'a> DualLoss<'a> {
    /// Binds the loss to a base model and its dual additions (installed by the caller).
    pub fn new(sd: &'a StableDiffusion, model: &'a DualModel) -> Result<Self> {
        let ids = |p: &str| -> Result<Tensor> {
            Ok(Tensor::new(sd.tokenizer.encode(p).as_slice(), &sd.device)?.unsqueeze(0)?)
        };
        Ok(Self {
            schedule: NoiseSchedule::new(&sd.scheduler_config)?,
            whole_ids: ids(&model.config.whole_prompt)?,
            part_ids: ids(&model.config.part_prompt)?,
            empty_ids: ids("")?,
            prompt_dropout: 0.0,
            mask_weight: 0.0,
            sd,
            model,
        })
    }

    /// Trains the unconditional mode classifier-free guidance samples with: each pair, with
    /// probability `p`, gets the empty prompt on both rows and BCM's all-zero reference — exactly
    /// what the unconditional rows see at sampling time. The paper uses none (SD-1.5 already
    /// has an unconditional mode); small models pretrained here need it (BENCHMARKS.md).
    pub fn with_prompt_dropout(mut self, p: f64) -> Self {
        self.prompt_dropout = p;
        self
    }

    /// Weights the whole-image rows' squared error by `1 + w·M` (M the defect mask at the
    /// model's sample resolution: a latent cell counts as defect when any of its pixels is).
    /// The paper uses none (`w = 0`). At CPU scale a defect covers ~1 % of a 64-px image, so
    /// in the plain MSE the whole branch barely sees it and learns the object instead
    /// (BENCHMARKS.md "DualAnoDiff learning at CPU scale"); the part branch needs no weight, as
    /// everything outside its defect is a flat fill that is easy to predict.
    pub fn with_mask_weight(mut self, w: f64) -> Self {
        self.mask_weight = w;
        self
    }

    /// The noise-prediction MSE over both branches of `batch`, random draws from `rng`: main-row
    /// noise, then one timestep per pair, then the reference noise, then (with prompt dropout)
    /// one coin per pair.
    pub fn loss(&self, batch: &PairBatch, rng: &mut impl Rng) -> Result<Tensor> {
        let n = batch.whole.dim(0)?;
        let sd = self.sd;
        let whole = sd.encode_mean(&batch.whole)?;
        let part = sd.encode_mean(&batch.part)?;
        let x0 = interleave(&whole, &part)?;
        let noise = randn_like(&x0, rng)?;
        let t_pairs: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..self.schedule.num_train_timesteps()))
            .collect();
        let t_rows: Vec<usize> = t_pairs.iter().flat_map(|&t| [t, t]).collect();
        let noisy = self.schedule.add_noise(&x0, &noise, &t_rows)?;
        let target = self.schedule.training_target(
            sd.scheduler_config.prediction_type,
            &x0,
            &noise,
            &t_rows,
        )?;
        // Prompts are encoded every step: the text-encoder LoRA is trained.
        let emb = sd
            .text_encoder
            .forward(&Tensor::cat(
                &[&self.whole_ids, &self.part_ids, &self.empty_ids],
                0,
            )?)?
            .last_hidden_state;
        let ref_noise = if self.model.config.bcm {
            // Shaped like one encoded image per pair (`whole`), as the background latents are.
            Some(randn_like(&whole, rng)?)
        } else {
            None
        };
        // Drawn last, and only when on, so runs without dropout keep their random streams.
        let dropped: Vec<bool> = (0..n)
            .map(|_| self.prompt_dropout > 0.0 && rng.random_bool(self.prompt_dropout.min(1.0)))
            .collect();
        let rows: Vec<u32> = (0..2 * n)
            .map(|i| if dropped[i / 2] { 2 } else { (i % 2) as u32 })
            .collect();
        let emb_rows = emb.index_select(&Tensor::new(rows.as_slice(), &sd.device)?, 0)?;
        let branch: Vec<usize> = (0..n).flat_map(|_| [WHOLE, PART]).collect();
        let tt = timesteps(&t_rows, &sd.device)?;
        let reference = match ref_noise {
            Some(ref_noise) => {
                let keep: Vec<f32> = dropped.iter().map(|&d| if d { 0.0 } else { 1.0 }).collect();
                let keep = Tensor::new(keep.as_slice(), &sd.device)?.reshape((n, 1, 1, 1))?;
                // A dropped pair references the all-zero image, as unconditional rows do.
                let bg = sd.encode_mean(&batch.background.broadcast_mul(&keep)?)?;
                let ref_noisy = self.schedule.add_noise(&bg, &ref_noise, &t_pairs)?;
                let ref_rows: Vec<u32> = dropped.iter().map(|&d| if d { 2 } else { 0 }).collect();
                let ref_emb =
                    emb.index_select(&Tensor::new(ref_rows.as_slice(), &sd.device)?, 0)?;
                Some((ref_noisy, timesteps(&t_pairs, &sd.device)?, ref_emb))
            }
            None => None,
        };
        let pred = self.model.forward(
            &sd.unet,
            &noisy,
            &tt,
            &emb_rows,
            &branch,
            reference.as_ref().map(|(s, t, e)| ReferenceInput {
                sample: s,
                timesteps: t,
                embeddings: e,
            }),
        )?;
        let err = (pred.to_dtype(DType::F32)? - target)?.sqr()?;
        if self.mask_weight == 0.0 {
            return Ok(err.mean_all()?);
        }
        let weights = self.row_weights(&batch.mask, &err)?;
        Ok(err.broadcast_mul(&weights)?.mean_all()?)
    }

    /// `[2n, 1, h, w]` per-pixel weights: `1 + w·M` on whole rows (M at the error's resolution),
    /// 1 on part rows.
    fn row_weights(&self, mask: &Tensor, err: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = err.dims4()?;
        let (_, _, mh, mw) = mask.dims4()?;
        let m = if (mh, mw) == (h, w) {
            mask.clone()
        } else {
            if mh % h != 0 || mw % w != 0 || mh / h != mw / w {
                return Err(Error::invalid(format!(
                    "mask weight: mask {mh}x{mw} does not reduce to the sample's {h}x{w}"
                )));
            }
            // Any defect pixel marks its latent cell: max over the cell, as 0/1 masks allow.
            let f = mh / h;
            mask.avg_pool2d(f)?.gt(0.0)?.to_dtype(DType::F32)?
        };
        let whole = ((m * self.mask_weight)? + 1.0)?;
        let part = Tensor::ones_like(&whole)?;
        interleave(&whole, &part)
    }
}

fn timesteps(t: &[usize], device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = t.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, t.len(), device)?)
}

fn randn_like(x: &Tensor, rng: &mut impl Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..x.elem_count()).map(|_| gaussian(rng) as f32).collect();
    Ok(Tensor::from_vec(v, x.dims(), x.device())?)
}

/// Runs `trainer` over `data` with the dual loss (`model` must be installed on `sd`) and its
/// `settings`, calling `after_step(step)` after every update.
pub fn run_dual_training(
    sd: &StableDiffusion,
    model: &DualModel,
    data: &dyn PairBatches,
    trainer: &mut Trainer,
    settings: LossSettings,
    after_step: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<StepStats>> {
    if data.is_empty() {
        return Err(Error::invalid("DualAnoDiff training: no training pairs"));
    }
    let LossSettings {
        prompt_dropout,
        mask_weight,
    } = settings;
    if !(0.0..1.0).contains(&prompt_dropout) {
        return Err(Error::invalid(format!(
            "prompt dropout {prompt_dropout} must be in [0, 1)"
        )));
    }
    if !(mask_weight >= 0.0 && mask_weight.is_finite()) {
        return Err(Error::invalid(format!(
            "mask weight {mask_weight} must be a finite number >= 0"
        )));
    }
    let loss = DualLoss::new(sd, model)?
        .with_prompt_dropout(prompt_dropout)
        .with_mask_weight(mask_weight);
    model.set_training(true);
    // Side by side when the batch is split (the model's LoRA has no dropout and BCM's reference
    // store is per thread, so micro-batches on different threads do not interact).
    let out = trainer.run_with_par(
        |b: &Batch| {
            // Augmentation and noise use separate streams derived from the micro-batch seed.
            let batch = data.batch(&b.indices, b.seed ^ AUGMENT_STREAM, &sd.device)?;
            loss.loss(&batch, &mut b.rng())
        },
        after_step,
    );
    model.set_training(false);
    out
}

/// Distinguishes the augmentation stream from the noise stream of the same micro-batch.
const AUGMENT_STREAM: u64 = 0xA076_1D64_78BD_642F;
