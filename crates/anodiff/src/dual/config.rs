//! The settings of a DualAnoDiff model (what is trained and how it is wired), saved beside its
//! weights as `dual_config.json` so a run folder loads back exactly.

use super::bcm::Fusion;
use crate::error::{Error, Result};
use crate::io::json::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the config inside a run / model folder.
pub const CONFIG_FILE: &str = "dual_config.json";

/// Model settings (METHODS.md A.2–A.5). Defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DualConfig {
    /// Prompt of the whole-image branch (set 0).
    pub whole_prompt: String,
    /// Prompt of the anomaly-part branch (set 1).
    pub part_prompt: String,
    /// LoRA rank of the two UNet sets and the text-encoder set (scale 1, no alpha).
    pub rank: usize,
    /// A shared LoRA set on the text encoder's q/k/v/out projections.
    pub text_encoder_lora: bool,
    /// SAIM after every attention layer (off: the "without SAIM" ablation).
    pub saim: bool,
    /// BCM on every self-attention layer (off: the "without BCM" ablation).
    pub bcm: bool,
    /// How BCM mixes the background features in.
    pub fusion: Fusion,
    /// Hidden width of BCM's MLP.
    pub bcm_hidden: usize,
    /// Seed of the fresh LoRA / SAIM / BCM weights.
    pub seed: u64,
}

impl Default for DualConfig {
    fn default() -> Self {
        Self {
            whole_prompt: "a vfx with sks".into(),
            part_prompt: "sks".into(),
            rank: 32,
            text_encoder_lora: true,
            saim: true,
            bcm: true,
            fusion: Fusion::Paper,
            bcm_hidden: 320,
            seed: 0,
        }
    }
}

impl DualConfig {
    /// Checks the values that would otherwise fail deep inside model construction.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::invalid("DualAnoDiff: LoRA rank must be at least 1"));
        }
        if self.bcm && self.bcm_hidden == 0 {
            return Err(Error::invalid(
                "DualAnoDiff: BCM hidden width must be at least 1",
            ));
        }
        Ok(())
    }

    /// Writes `dir/dual_config.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(CONFIG_FILE), self)
    }

    /// Reads `dir/dual_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let c: Self = read_json(&dir.join(CONFIG_FILE))?;
        c.validate()?;
        Ok(c)
    }
}
