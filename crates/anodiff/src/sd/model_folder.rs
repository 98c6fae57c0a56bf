//! A whole Stable Diffusion model as a diffusers folder, both ways: [`StableDiffusion::save`]
//! writes `model_index.json` and one sub-folder per component (its config through
//! [`ConfigFile`], its weights as safetensors, the tokenizer's files), and
//! [`StableDiffusion::load`] reads such a folder — or any diffusers SD-1/SD-2 folder — back.
//! The per-component reading (configs, weight files) is [`ModelDir`] in `weights.rs`.
//!
//! Pixel-space models (no VAE) add two anodiff keys to `model_index.json`, which diffusers
//! ignores: `anodiff_pixel_space: true` and `anodiff_pixel_norm` (the [`PixelNorm`] or null).

use super::clip::{ClipTextConfig, ClipTextModel};
use super::config_file::{ConfigFile, DIFFUSERS_VERSION};
use super::model_params::ModelParams;
use super::pipeline::StableDiffusion;
use super::pixel_norm::PixelNorm;
use super::scheduler::{SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::ModelDir;
use crate::error::{Error, Result};
use crate::io::json::{read_json, write_json};
use crate::nn::tensor_files::write_safetensors;
use crate::nn::Params;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The weight file names diffusers and transformers use in each component folder.
const UNET_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const VAE_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const TEXT_ENCODER_WEIGHTS: &str = "model.safetensors";

/// The current values of a store's variables, by parameter name.
fn tensors(p: &Params) -> Vec<(String, Tensor)> {
    p.vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect()
}

/// Refuses to write weights that would not load back: `build` must construct the component from
/// exactly these tensors (none missing, none of the wrong shape, none left over).
fn check_complete(
    component: &str,
    weights: &[(String, Tensor)],
    device: &Device,
    build: impl FnOnce(&Params) -> Result<()>,
) -> Result<()> {
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    let p = Params::from_tensors(map, device);
    build(&p).map_err(|e| {
        Error::invalid(format!(
            "cannot save {component}: its parameter store does not hold every weight as a \
             trainable Var ({e})"
        ))
    })?;
    let extra = p.unused();
    if !extra.is_empty() {
        return Err(Error::invalid(format!(
            "cannot save {component}: tensors the model does not use: {}",
            extra.join(", ")
        )));
    }
    Ok(())
}

impl StableDiffusion {
    /// Writes the model as a diffusers folder at `dir`: `model_index.json`, `unet/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/` (class: [`Self::default_scheduler`]) and, for
    /// latent-space models, `vae/`. Weights come from `params` (see [`ModelParams`]) and are
    /// checked to rebuild each component before anything is written. Every file is written
    /// atomically; files of other components already in `dir` are left alone.
    ///
    /// [`Self::default_scheduler`]: StableDiffusion::default_scheduler
    pub fn save(&self, dir: &Path, params: &ModelParams) -> Result<()> {
        let dev = &self.device;
        let unet_w = tensors(&params.unet);
        let text_w = tensors(&params.text_encoder);
        let unet_cfg = self.unet.config();
        let text_cfg = self.text_encoder.config();
        check_complete("the UNet", &unet_w, dev, |p| {
            UNet2DConditionModel::new(unet_cfg, p).map(|_| ())
        })?;
        check_complete("the text encoder", &text_w, dev, |p| {
            ClipTextModel::new(text_cfg, p).map(|_| ())
        })?;
        let vae = match (&self.vae, &params.vae) {
            (Some(vae), Some(p)) => {
                let w = tensors(p);
                check_complete("the VAE", &w, dev, |p| {
                    AutoencoderKL::new(vae.config(), p).map(|_| ())
                })?;
                Some((vae.config(), w))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "cannot save: the model has a VAE but no VAE parameter store was given",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "cannot save: a VAE parameter store was given for a pixel-space model",
                ))
            }
        };

        let scheduler = SchedulerConfig {
            class_name: Some(self.default_scheduler.class_name().into()),
            ..self.scheduler_config.clone()
        };
        let unet_dir = dir.join("unet");
        unet_cfg.save_config(&unet_dir)?;
        write_safetensors(&unet_dir.join(UNET_WEIGHTS), &unet_w)?;
        let text_dir = dir.join("text_encoder");
        text_cfg.save_config(&text_dir)?;
        write_safetensors(&text_dir.join(TEXT_ENCODER_WEIGHTS), &text_w)?;
        if let Some((cfg, w)) = &vae {
            let vae_dir = dir.join("vae");
            cfg.save_config(&vae_dir)?;
            write_safetensors(&vae_dir.join(VAE_WEIGHTS), w)?;
        }
        self.tokenizer.save(&dir.join("tokenizer"))?;
        scheduler.save_config(&dir.join("scheduler"))?;
        // Written last: a folder with a model_index.json is complete.
        let index = self.model_index(self.default_scheduler);
        write_json(&dir.join("model_index.json"), &index)
    }

    /// `model_index.json` as diffusers' `save_pretrained` writes it for a pipeline without a
    /// safety checker, plus the pixel-space keys.
    fn model_index(&self, scheduler: SchedulerKind) -> Value {
        let inpaint = self.unet.in_channels() == 2 * self.sample_channels() + 1;
        let mut index = json!({
            "_class_name": if inpaint {
                "StableDiffusionInpaintPipeline"
            } else {
                "StableDiffusionPipeline"
            },
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", scheduler.class_name()],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        });
        if self.vae.is_none() {
            index["vae"] = json!([null, null]);
            index["anodiff_pixel_space"] = json!(true);
            index["anodiff_pixel_norm"] = json!(self.pixel_norm);
        }
        index
    }

    /// [`Self::load`] with every weight a trainable `Var`, and the stores they live in: the start
    /// of full fine-tuning of an existing model (the caller picks which `Var`s the optimiser
    /// updates; [`Self::save`] needs all of them to be `Var`s).
    pub fn load_trainable(dir: &Path, device: &Device) -> Result<(Self, ModelParams)> {
        let mut sd = Self::load(dir, device)?;
        let m = ModelDir::open(dir)?;
        let trainable = |name: &str| -> Result<Params> {
            Ok(m.component(name)?.params(device)?.with_trainable(|_| true))
        };
        let params = ModelParams {
            text_encoder: trainable("text_encoder")?,
            unet: trainable("unet")?,
            vae: match sd.vae {
                Some(_) => Some(trainable("vae")?),
                None => None,
            },
        };
        sd.text_encoder = ClipTextModel::new(sd.text_encoder.config(), &params.text_encoder)?;
        sd.unet = UNet2DConditionModel::new(sd.unet.config(), &params.unet)?;
        if let (Some(v), Some(p)) = (&sd.vae, &params.vae) {
            sd.vae = Some(AutoencoderKL::new(v.config(), p)?);
        }
        Ok((sd, params))
    }

    /// Loads a diffusers Stable Diffusion folder (or one written by [`Self::save`]). A folder
    /// without `vae/` whose UNet takes RGB is a pixel-space model; its `anodiff_pixel_norm` is
    /// read from `model_index.json`. The default scheduler is the class named in
    /// `scheduler_config.json` (PNDM, SD's own, when that class is not one anodiff has).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let m = ModelDir::open(dir)?;
        let tokenizer = ClipTokenizer::from_dir(&m.component("tokenizer")?.dir)?;
        let text_encoder = ClipTextModel::load(&m.component("text_encoder")?, device)?;
        let unet = UNet2DConditionModel::load(&m.component("unet")?, device)?;
        // Pixel-space models: RGB in, or RGB + mask + masked RGB (the inpainting form, 7).
        let vae = if !m.has_component("vae") && matches!(unet.in_channels(), 3 | 7) {
            None
        } else {
            Some(AutoencoderKL::load(&m.component("vae")?, device)?)
        };
        let index_path = m.root.join("model_index.json");
        let pixel_norm = match (&vae, read_json::<Value>(&index_path)) {
            (None, Ok(index)) => match index.get("anodiff_pixel_norm") {
                Some(Value::Null) | None => None,
                Some(v) => {
                    Some(serde_json::from_value::<PixelNorm>(v.clone()).map_err(|e| {
                        Error::config(&index_path, format!("anodiff_pixel_norm: {e}"))
                    })?)
                }
            },
            _ => None,
        };
        let scheduler_config = SchedulerConfig::load_config(&m.component("scheduler")?.dir)?;
        // An unknown class still samples with the SD default (PNDM) unless the user picks one.
        let default_scheduler = scheduler_config.class_kind().unwrap_or(SchedulerKind::Pndm);
        let te: &ClipTextConfig = text_encoder.config();
        let cross = unet.config().cross_attention_dim.get(0);
        if te.hidden_size != cross {
            return Err(Error::config(
                dir,
                format!(
                    "text encoder width {} does not match the UNet's cross_attention_dim {}",
                    te.hidden_size, cross
                ),
            ));
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            vae,
            pixel_norm,
            unet,
            scheduler_config,
            default_scheduler,
            device: device.clone(),
        })
    }
}
