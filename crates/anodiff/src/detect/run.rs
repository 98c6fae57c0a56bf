//! A `detect-train` run folder and the model it holds, ready for inference: `detect_config.json`
//! ([`DetectRunConfig`]) names the model (`model/` of a full run, or the base folder of a LoRA
//! run plus its LoRA file), the categories it was trained on and the prompt book, so inference
//! builds exactly the training prompts.

use super::masks::TrainMaskOptions;
use super::prompts::{PromptBook, PromptLevels};
use crate::error::{Error, Result};
use crate::io::json::read_json;
use crate::sd::lora::apply::{apply_file, AppliedLora};
use crate::sd::pipeline::StableDiffusion;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of a run's config.
pub const RUN_CONFIG: &str = "detect_config.json";

/// What a run was trained as (written by `detect-train`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectRunConfig {
    /// The model folder: relative paths are inside the run folder (`model` of a full run), an
    /// absolute or other path is the base model of a LoRA run.
    pub model: PathBuf,
    /// LoRA file inside the run folder (LoRA runs).
    pub lora: Option<PathBuf>,
    /// LoRA rank (LoRA runs).
    pub lora_rank: Option<usize>,
    /// Category folder names trained on.
    pub categories: Vec<String>,
    /// The prompt book used.
    pub prompts: PromptBook,
    /// The prompt levels used.
    pub levels: PromptLevels,
    /// Training side in pixels (inference works at this size).
    pub size: usize,
    /// The training masks.
    pub masks: TrainMaskOptions,
    /// The foreground estimator used for training masks (`classical` or `dir:PATH`).
    pub foreground: String,
}

/// A loaded run.
pub struct DetectRun {
    /// The run folder.
    pub dir: PathBuf,
    /// Its config.
    pub config: DetectRunConfig,
    /// The inpainting model (LoRA installed for LoRA runs).
    pub sd: StableDiffusion,
    /// The installed LoRA, kept alive with the model.
    pub lora: Option<AppliedLora>,
}

impl DetectRun {
    /// Opens a run folder; a missing or unfinished run is a clear error naming the folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(RUN_CONFIG);
        if !cfg_path.is_file() {
            return Err(Error::invalid(format!(
                "{}: not a detect-train run (no {RUN_CONFIG}; train one with `anodiff detect-train`)",
                dir.display()
            )));
        }
        let config: DetectRunConfig = read_json(&cfg_path)?;
        let model_dir = if config.model.is_relative() && config.lora.is_none() {
            dir.join(&config.model)
        } else {
            config.model.clone()
        };
        let sd = StableDiffusion::load(&model_dir, &Device::Cpu)?;
        let lora = match &config.lora {
            Some(f) => Some(apply_file(&sd.unet, &sd.text_encoder, &dir.join(f))?),
            None => None,
        };
        let ch = sd.sample_channels();
        if sd.unet.in_channels() != 2 * ch + 1 {
            return Err(Error::invalid(format!(
                "{}: the run's model is not an inpainting model",
                model_dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            sd,
            lora,
        })
    }

    /// The prompt of `category`; a category the model was not trained on is an error listing the
    /// ones it knows (its normal appearance is unknown to the model, so its maps would mean nothing).
    pub fn prompt(&self, category: &str) -> Result<String> {
        if !self.config.categories.iter().any(|c| c == category) {
            return Err(Error::invalid(format!(
                "category `{category}` was not among the categories run {} was trained on ({}); train a model that includes it",
                self.dir.display(),
                self.config.categories.join(", ")
            )));
        }
        Ok(self.config.prompts.prompt(category, self.config.levels))
    }
}
