//! Trains the localisation network: each micro-batch example is, with probability 1/2 (drawn from
//! the batch's seeded stream), a random defect-free training image (random h/v flip) with an empty
//! mask, otherwise a pair from the anomaly source. Focal loss γ = 2; Adam (AdamW, weight decay 0),
//! no gradient clipping (as DRAEM). The final weights are the result: no checkpoint is ever
//! selected on test data.
//!
//! The step schedule (lr × decay at given fractions) is not one of the trainer's `LrSchedule`s,
//! so the run is split into constant-lr phases that hand over through a checkpoint: each phase is
//! a `Trainer` resumed from the previous phase's checkpoint, which restores weights, Adam moments,
//! step count and data order exactly. Without a run directory the phases hand over through a
//! private temporary directory.

use super::focal::focal_loss;
use super::net::{LocalisationNet, NetConfig};
use super::protocol::Protocol;
use crate::error::{Error, Result};
use crate::eval::sources::{AnomalySource, SourceContext};
use crate::io::image_tensor::{mask_to_tensor, rgb_to_unit_tensor};
use crate::io::json::{read_json, write_json};
use crate::nn::Params;
use crate::train::{checkpoint, AdamWConfig, LrSchedule, StepStats, TrainConfig, Trainer};
use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Weights file written into the run directory.
pub const WEIGHTS_FILE: &str = "localisation.safetensors";
/// The protocol a run was trained with, written next to the weights; a resumed run must match it.
pub const PROTOCOL_FILE: &str = "protocol.json";

/// One training example drawn from `rng`: (image, mask), both `size`×`size`.
fn draw_example(
    ctx: &SourceContext,
    source: &mut dyn AnomalySource,
    rng: &mut StdRng,
    size: u32,
) -> Result<(RgbImage, GrayImage)> {
    if rng.random_bool(0.5) {
        let i = rng.random_range(0..ctx.good.len());
        let mut img = ctx.good[i].clone();
        if rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        if rng.random_bool(0.5) {
            image::imageops::flip_vertical_in_place(&mut img);
        }
        if img.dimensions() != (size, size) {
            img = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
        }
        Ok((img, GrayImage::new(size, size)))
    } else {
        let pair = source.sample(rng)?;
        if pair.image.dimensions() != (size, size) || pair.mask.dimensions() != (size, size) {
            return Err(Error::invalid(format!(
                "anomaly source `{}` returned image {:?} / mask {:?}, expected {size}x{size}",
                source.name(),
                pair.image.dimensions(),
                pair.mask.dimensions()
            )));
        }
        Ok((pair.image, pair.mask))
    }
}

/// Removes a temporary phase-handover directory however training ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Trains a fresh network (seeded by `seed`) under `protocol`. With `run_dir`, checkpoints,
/// `train_log.jsonl`, `protocol.json` and the final `localisation.safetensors` (+ `.json`) are
/// written there, and a run directory that already holds a checkpoint is resumed (its
/// `protocol.json` must match).
pub fn train(
    ctx: &SourceContext,
    source: &mut dyn AnomalySource,
    protocol: &Protocol,
    seed: u64,
    run_dir: Option<&Path>,
    mut progress: impl FnMut(&StepStats),
) -> Result<LocalisationNet> {
    protocol.validate()?;
    if ctx.good.is_empty() {
        return Err(Error::invalid(
            "localisation training needs at least one defect-free image",
        ));
    }
    if ctx.size as usize != protocol.size {
        return Err(Error::invalid(format!(
            "source context is at {} px but the protocol trains at {} px",
            ctx.size, protocol.size
        )));
    }
    let dev = Device::Cpu;
    let config = NetConfig {
        width: protocol.width,
        in_ch: 3,
        standardise: protocol.standardise,
    };
    let params = Params::fresh(seed, &dev);
    let net = LocalisationNet::with_config(&params, config.clone())?;
    let vars = params.vars();

    let _temp;
    let dir: PathBuf = match run_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            check_protocol_file(&d.join(PROTOCOL_FILE), protocol)?;
            d.to_path_buf()
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let d = std::env::temp_dir().join(format!(
                "anodiff-localisation-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            _temp = TempDir(d.clone());
            d
        }
    };
    let done = match checkpoint::latest(&dir) {
        Some(ck) => checkpoint::load(&ck, &dev)?.state.step,
        None => 0,
    };
    let steps = protocol.steps();
    // Periodic checkpoints make long runs resumable; a temporary directory only needs the
    // phase hand-overs.
    let every = if run_dir.is_some() {
        steps.div_ceil(10)
    } else {
        0
    };
    let size = protocol.size as u32;
    let source_name = source.name().to_string();
    let mut loss_fn = |batch: &crate::train::Batch| -> Result<Tensor> {
        let mut rng = batch.rng();
        let mut xs = Vec::with_capacity(batch.indices.len());
        let mut ms = Vec::with_capacity(batch.indices.len());
        for _ in 0..batch.indices.len() {
            let (img, mask) = draw_example(ctx, source, &mut rng, size)?;
            xs.push(rgb_to_unit_tensor(&img, &dev)?);
            ms.push(mask_to_tensor(&mask, &dev)?);
        }
        let x = Tensor::stack(&xs, 0)?;
        let m = Tensor::cat(&ms, 0)?;
        let logits = net.forward(&x)?;
        Ok(focal_loss(&logits, &m, 2.0)?)
    };
    let phases = protocol.phases();
    let last = phases.len() - 1;
    for (i, &(end, lr)) in phases.iter().enumerate() {
        // Finished phases are skipped, except the last: resuming a finished run must still load
        // its final weights.
        if done >= end && i < last {
            continue;
        }
        let cfg = TrainConfig {
            steps: end,
            batch_size: protocol.batch,
            grad_accum: 1,
            seed,
            optimizer: AdamWConfig {
                lr,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
            lr_schedule: LrSchedule::Constant,
            max_grad_norm: None,
            checkpoint_every: every,
            keep_checkpoints: 1,
            out_dir: Some(dir.clone()),
        };
        let mut trainer = Trainer::new(cfg, vars.clone(), ctx.good.len())?.with_metadata(
            serde_json::json!({"job": "localisation", "protocol": protocol, "source": source_name}),
        );
        if checkpoint::latest(&dir).is_some() {
            trainer.resume(&dir)?;
        }
        let start = trainer.step();
        while trainer.step() < end {
            let s = trainer.train_step(&mut loss_fn)?;
            progress(&s);
            if every > 0 && trainer.step().is_multiple_of(every) && trainer.step() < end {
                trainer.save_checkpoint()?;
            }
        }
        if trainer.step() > start {
            trainer.save_checkpoint()?;
        }
    }
    // The returned net holds plain (detached) copies of the final weights, so prediction
    // records no autograd graph; it is exactly what `LocalisationNet::load` gives back.
    let final_weights: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
        .collect();
    let trained = LocalisationNet::with_config(&Params::from_tensors(final_weights, &dev), config)?;
    if let Some(d) = run_dir {
        trained.save(&d.join(WEIGHTS_FILE))?;
    }
    Ok(trained)
}

/// Writes `protocol.json`, or checks that an existing one (a resumed run) matches.
fn check_protocol_file(path: &Path, protocol: &Protocol) -> Result<()> {
    if path.is_file() {
        let saved: Protocol = read_json(path)?;
        if &saved != protocol {
            return Err(Error::config(
                path,
                format!("run directory was trained with {saved:?}, now {protocol:?}"),
            ));
        }
        return Ok(());
    }
    write_json(path, protocol)
}
