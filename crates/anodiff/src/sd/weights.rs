//! The diffusers folder layout: `model_index.json` plus one sub-folder per component (`unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), each with a `config.json` and weights in
//! `*.safetensors` (f32, f16 or bf16). Only safetensors are read: pickled `.bin` files can execute
//! code and are refused with a clear message.

use crate::error::{Error, Result};
use crate::io::json::read_json;
use crate::nn::{Params, TensorFiles};
use candle_core::Device;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A diffusers model folder.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The folder holding `model_index.json`.
    pub root: PathBuf,
}

impl ModelDir {
    /// A model folder; fails if `root` is not a folder.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::config(
                &root,
                "model folder does not exist or is not a folder",
            ));
        }
        Ok(Self { root })
    }

    /// One component sub-folder (`unet`, `vae`, …).
    pub fn component(&self, name: &str) -> Result<Component> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(Error::config(
                &dir,
                format!("component folder `{name}` is missing from the model folder"),
            ));
        }
        Ok(Component { dir })
    }

    /// Whether the component sub-folder `name` exists.
    pub fn has_component(&self, name: &str) -> bool {
        self.root.join(name).is_dir()
    }
}

/// One component folder with its config and weights.
#[derive(Clone, Debug)]
pub struct Component {
    /// The component folder.
    pub dir: PathBuf,
}

impl Component {
    /// The component at `dir` (not checked until read).
    pub fn at(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// Parses `config.json` (or another JSON file of the component) into `T`.
    pub fn json<T: DeserializeOwned>(&self, file: &str) -> Result<T> {
        read_json(&self.dir.join(file))
    }

    /// Parses the component's `config.json` into `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        self.json("config.json")
    }

    /// The component's safetensors files. A single full-precision file is preferred over an
    /// `.fp16.` variant when both exist; sharded files (`…-00001-of-00002.safetensors`) are all read.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut all: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        all.sort();
        if all.is_empty() {
            let has_bin = self.dir.join("diffusion_pytorch_model.bin").exists()
                || self.dir.join("pytorch_model.bin").exists();
            let hint = if has_bin {
                " (only a pickled .bin file is present: convert it to safetensors first)"
            } else {
                ""
            };
            return Err(Error::config(
                &self.dir,
                format!("no *.safetensors weight file{hint}"),
            ));
        }
        let full: Vec<PathBuf> = all
            .iter()
            .filter(|p| !p.to_string_lossy().contains(".fp16."))
            .cloned()
            .collect();
        Ok(if full.is_empty() { all } else { full })
    }

    /// Loads the weights as a frozen parameter store.
    pub fn params(&self, device: &Device) -> Result<Params> {
        let files = TensorFiles::load(&self.weight_files()?, device)?;
        Ok(Params::from_files(files, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_component_and_weights_are_named() {
        let root = std::env::temp_dir().join(format!("anodiff-w-{}", std::process::id()));
        std::fs::create_dir_all(root.join("unet")).unwrap();
        let m = ModelDir::open(&root).unwrap();
        let e = m.component("vae").unwrap_err().to_string();
        assert!(e.contains("vae"), "{e}");
        std::fs::write(root.join("unet/diffusion_pytorch_model.bin"), b"x").unwrap();
        let e = m
            .component("unet")
            .unwrap()
            .weight_files()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unet") && e.contains(".bin"), "{e}");
        std::fs::write(
            root.join("unet/diffusion_pytorch_model.safetensors"),
            b"garbage",
        )
        .unwrap();
        let e = m
            .component("unet")
            .unwrap()
            .params(&Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
        std::fs::write(root.join("unet/config.json"), b"{not json").unwrap();
        let e = m
            .component("unet")
            .unwrap()
            .config::<serde_json::Value>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
