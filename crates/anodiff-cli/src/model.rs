//! Loading the model a sampling or training command was pointed at (`--model DIR` or
//! `--preset NAME`).

use anodiff::sd::model_source::ModelSource;
use anodiff::sd::pipeline::StableDiffusion;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::Path;

/// Loads the model folder or the preset (weights seeded by `seed`) on the CPU.
pub fn load_model(
    model: Option<&Path>,
    preset: Option<&str>,
    seed: u64,
) -> Result<StableDiffusion> {
    let source = ModelSource::choose(model, preset, seed)?;
    source
        .load(&Device::Cpu)
        .with_context(|| format!("loading model {source}"))
}
