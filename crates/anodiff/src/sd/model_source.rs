//! Where a Stable Diffusion model comes from: a diffusers folder, or a preset's shapes with
//! seeded random weights (smoke runs, tests, training from scratch).

use super::pipeline::StableDiffusion;
use super::presets::Preset;
use crate::error::{Error, Result};
use candle_core::Device;
use std::fmt;
use std::path::{Path, PathBuf};

/// A model folder or a preset.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A diffusers folder (`model_index.json`, `unet/`, …).
    Folder(PathBuf),
    /// A preset name and the seed of its random weights.
    Preset {
        /// Preset name (see [`Preset::by_name`]).
        name: String,
        /// Seed of the random weights.
        seed: u64,
    },
}

impl ModelSource {
    /// The source chosen by exactly one of `folder` and `preset` (the two alternatives a command
    /// line offers); `seed` is used only with a preset.
    pub fn choose(folder: Option<&Path>, preset: Option<&str>, seed: u64) -> Result<Self> {
        match (folder, preset) {
            (Some(f), None) => Ok(ModelSource::Folder(f.to_path_buf())),
            (None, Some(p)) => Ok(ModelSource::Preset {
                name: p.to_string(),
                seed,
            }),
            _ => Err(Error::invalid(
                "give either a model folder (--model DIR) or a preset (--preset NAME)",
            )),
        }
    }

    /// Loads the model onto `device`.
    pub fn load(&self, device: &Device) -> Result<StableDiffusion> {
        match self {
            ModelSource::Folder(dir) => StableDiffusion::load(dir, device),
            ModelSource::Preset { name, seed } => {
                StableDiffusion::from_preset(&Preset::by_name(name)?, *seed, device)
            }
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Folder(dir) => write!(f, "{}", dir.display()),
            ModelSource::Preset { name, seed } => write!(f, "preset {name} (weights seed {seed})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_choice() {
        let dir = Path::new("/m");
        assert_eq!(
            ModelSource::choose(Some(dir), None, 3).unwrap(),
            ModelSource::Folder(dir.into())
        );
        assert_eq!(
            ModelSource::choose(None, Some("tiny"), 3).unwrap(),
            ModelSource::Preset {
                name: "tiny".into(),
                seed: 3
            }
        );
        assert!(ModelSource::choose(None, None, 0).is_err());
        assert!(ModelSource::choose(Some(dir), Some("tiny"), 0).is_err());
    }
}
