//! [`DualModel`]: everything DualAnoDiff adds to a Stable Diffusion model — two UNet LoRA sets
//! (0 whole image, 1 anomaly part), a shared text-encoder LoRA, SAIM after every attention layer
//! and BCM on every self-attention layer — installed through attention processors and adapter
//! slots, never by changing the UNet.
//!
//! Files in a model / run folder:
//! - `pytorch_lora_weights.safetensors`: UNet set 0 (whole image) + the text-encoder set, in
//!   diffusers/peft names, so plain SD tools can load the whole-image LoRA;
//! - `pytorch_lora_weights_part.safetensors`: UNet set 1 (anomaly part), same naming;
//! - `dual_modules.safetensors`: SAIM / BCM weights under reference-code names per attention layer;
//! - `dual_config.json`: [`DualConfig`].

use super::bcm::{BcmLayer, BcmProcessor, ReferenceStore};
use super::config::DualConfig;
use super::saim::{SaimLayer, SaimProcessor};
use crate::error::{Error, Result};
use crate::nn::tensor_files::write_safetensors;
use crate::nn::{Params, TensorFiles};
use crate::sd::attention::{
    AttnKind, AttnLayerInfo, AttnProcessor, ForwardCtx, HasAttention, PassKind, ProcessorStack,
};
use crate::sd::clip::ClipTextModel;
use crate::sd::lora::{Lora, LoraConfig};
use crate::sd::unet::UNet2DConditionModel;
use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Whole-image LoRA (+ text encoder) file.
pub const LORA_WHOLE_FILE: &str = "pytorch_lora_weights.safetensors";
/// Anomaly-part LoRA file.
pub const LORA_PART_FILE: &str = "pytorch_lora_weights_part.safetensors";
/// SAIM / BCM weights file.
pub const MODULES_FILE: &str = "dual_modules.safetensors";

/// Branch index of whole-image rows (LoRA set 0).
pub const WHOLE: usize = 0;
/// Branch index of anomaly-part rows (LoRA set 1).
pub const PART: usize = 1;

/// The inputs of a BCM reference pass: one row per whole-image row of the main batch.
pub struct ReferenceInput<'a> {
    /// Noised background latents `[R, C, h, w]` (already scaled for the scheduler).
    pub sample: &'a Tensor,
    /// Timesteps `[R]`.
    pub timesteps: &'a Tensor,
    /// Text embeddings `[R, 77, D]` (whole-image prompt; unconditional rows: the negative prompt).
    pub embeddings: &'a Tensor,
}

/// The DualAnoDiff additions of one model.
pub struct DualModel {
    /// Settings this model was built with.
    pub config: DualConfig,
    /// UNet LoRA with two sets.
    pub unet_lora: Lora,
    /// Shared text-encoder LoRA (one set), when enabled.
    pub clip_lora: Option<Lora>,
    modules: Params,
    saim: BTreeMap<String, Arc<SaimLayer>>,
    bcm: BTreeMap<String, Arc<BcmLayer>>,
    /// Reference states between a reference pass and the main pass that uses them.
    pub store: Arc<ReferenceStore>,
}

/// Trainable parameter counts of the DualAnoDiff additions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DualParameterCounts {
    /// Both UNet LoRA sets.
    pub unet_lora: usize,
    /// The text-encoder LoRA set.
    pub text_encoder_lora: usize,
    /// SAIM over all attention layers.
    pub saim: usize,
    /// BCM over all self-attention layers.
    pub bcm: usize,
}

impl DualParameterCounts {
    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.unet_lora + self.text_encoder_lora + self.saim + self.bcm
    }
}

impl DualModel {
    /// Fresh LoRA sets (down random, up 0) and SAIM / BCM weights from `modules` — a fresh store
    /// (`Params::fresh`, trainable) or one read from a file. Nothing is installed yet.
    pub fn new(
        unet: &UNet2DConditionModel,
        clip: &ClipTextModel,
        config: &DualConfig,
        modules: Params,
    ) -> Result<Self> {
        config.validate()?;
        let unet_lora = Lora::new_unet(
            unet,
            &LoraConfig {
                sets: 2,
                seed: config.seed,
                ..LoraConfig::unet(config.rank)
            },
        )?;
        let clip_lora = if config.text_encoder_lora {
            Some(Lora::new_clip(
                clip,
                &LoraConfig {
                    seed: config.seed.wrapping_add(1),
                    ..LoraConfig::clip(config.rank)
                },
            )?)
        } else {
            None
        };
        let mut saim = BTreeMap::new();
        let mut bcm = BTreeMap::new();
        for info in unet.attention_infos() {
            let p = modules.pp(&info.name);
            if config.saim {
                saim.insert(
                    info.name.clone(),
                    Arc::new(SaimLayer::new(&p, info.query_dim)?),
                );
            }
            if config.bcm && info.kind == AttnKind::SelfAttn {
                bcm.insert(
                    info.name.clone(),
                    Arc::new(BcmLayer::new(
                        &p,
                        info.query_dim,
                        config.bcm_hidden,
                        config.fusion,
                    )?),
                );
            }
        }
        Ok(Self {
            config: config.clone(),
            unet_lora,
            clip_lora,
            modules,
            saim,
            bcm,
            store: Arc::new(ReferenceStore::default()),
        })
    }

    /// Fresh weights for training from `config.seed`.
    pub fn fresh(
        unet: &UNet2DConditionModel,
        clip: &ClipTextModel,
        config: &DualConfig,
        device: &Device,
    ) -> Result<Self> {
        let seed = config.seed.wrapping_mul(0x9E37_79B9).wrapping_add(77);
        Self::new(unet, clip, config, Params::fresh(seed, device))
    }

    /// Reads a model folder written by [`DualModel::save`]; `trainable` makes every weight a
    /// `Var` again (resuming training), otherwise they are frozen (generation).
    pub fn load(
        dir: &Path,
        unet: &UNet2DConditionModel,
        clip: &ClipTextModel,
        trainable: bool,
        device: &Device,
    ) -> Result<Self> {
        let config = DualConfig::load(dir)?;
        let modules = if config.saim || config.bcm {
            let files = TensorFiles::load(&[dir.join(MODULES_FILE)], device)?;
            let p = Params::from_files(files, device);
            if trainable {
                p.with_trainable(|_| true)
            } else {
                p
            }
        } else {
            Params::from_tensors(Default::default(), device)
        };
        let m = Self::new(unet, clip, &config, modules)?;
        let unused = m.modules.unused();
        if !unused.is_empty() {
            return Err(Error::invalid(format!(
                "{}: {} tensors match no layer of this model (first: {}); was it trained with \
                 other settings or for another UNet?",
                dir.join(MODULES_FILE).display(),
                unused.len(),
                unused[0]
            )));
        }
        m.load_lora(&dir.join(LORA_WHOLE_FILE), &dir.join(LORA_PART_FILE))?;
        Ok(m)
    }

    /// Overwrites the LoRA weights from a whole-image file (UNet set 0 + text encoder) and a
    /// part file (UNet set 1).
    pub fn load_lora(&self, whole: &Path, part: &Path) -> Result<()> {
        self.unet_lora.load_set(whole, 0)?;
        self.unet_lora.load_set(part, 1)?;
        if let Some(c) = &self.clip_lora {
            c.load_set(whole, 0)?;
        }
        Ok(())
    }

    /// Writes the four files of a model folder (atomically, each).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut whole: Vec<(&Lora, usize)> = vec![(&self.unet_lora, 0)];
        if let Some(c) = &self.clip_lora {
            whole.push((c, 0));
        }
        Lora::save_many(&dir.join(LORA_WHOLE_FILE), &whole)?;
        self.unet_lora.save(&dir.join(LORA_PART_FILE), 1)?;
        if self.config.saim || self.config.bcm {
            let tensors: Vec<(String, Tensor)> = self
                .module_vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().detach()))
                .collect();
            write_safetensors(&dir.join(MODULES_FILE), &tensors)?;
        }
        self.config.save(dir)
    }

    /// Installs the processors (LoRA + BCM + SAIM per attention layer) and the text-encoder
    /// adapters, replacing whatever was installed.
    pub fn install(&self, unet: &UNet2DConditionModel, clip: &ClipTextModel) {
        unet.set_attn_processors(&mut |info: &AttnLayerInfo| self.processor(info));
        if let Some(c) = &self.clip_lora {
            c.install_clip(clip);
        }
    }

    fn processor(&self, info: &AttnLayerInfo) -> Arc<dyn AttnProcessor> {
        let mut stack: Vec<Arc<dyn AttnProcessor>> = Vec::new();
        if let Some(l) = self.unet_lora.unet_processor(&info.name) {
            stack.push(l);
        }
        if let Some(b) = self.bcm.get(&info.name) {
            stack.push(Arc::new(BcmProcessor {
                layer: b.clone(),
                store: self.store.clone(),
            }));
        }
        if let Some(s) = self.saim.get(&info.name) {
            stack.push(Arc::new(SaimProcessor(s.clone())));
        }
        Arc::new(ProcessorStack(stack))
    }

    /// Training mode (LoRA dropout; none by default).
    pub fn set_training(&self, on: bool) {
        self.unet_lora.set_training(on);
        if let Some(c) = &self.clip_lora {
            c.set_training(on);
        }
    }

    /// SAIM / BCM variables under their file names.
    pub fn module_vars(&self) -> Vec<(String, Var)> {
        self.modules.vars()
    }

    /// Every trainable variable: UNet LoRA (both sets), text-encoder LoRA, SAIM, BCM.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = self.unet_lora.vars();
        if let Some(c) = &self.clip_lora {
            v.extend(c.vars());
        }
        v.extend(self.module_vars());
        v
    }

    /// One UNet evaluation of an interleaved batch (`branch[i]` = 0 whole, 1 part), preceded by
    /// the BCM reference pass when `reference` is given and BCM is on. `sample: [B, C, h, w]`,
    /// `timesteps: [B]`, `embeddings: [B, 77, D]` → predicted noise `[B, C, h, w]`.
    pub fn forward(
        &self,
        unet: &UNet2DConditionModel,
        sample: &Tensor,
        timesteps: &Tensor,
        embeddings: &Tensor,
        branch: &[usize],
        reference: Option<ReferenceInput>,
    ) -> Result<Tensor> {
        self.store.clear();
        if let (Some(r), true) = (reference, self.config.bcm) {
            let rows = r.sample.dim(0)?;
            let whole = branch.iter().filter(|&&b| b == WHOLE).count();
            if rows != whole {
                return Err(Error::invalid(format!(
                    "BCM reference pass has {rows} rows for {whole} whole-image rows"
                )));
            }
            let ctx = ForwardCtx {
                pass: PassKind::Reference,
                branch: Some(vec![WHOLE; rows]),
                ..Default::default()
            };
            unet.forward(r.sample, r.timesteps, r.embeddings, &ctx)?;
        }
        let ctx = ForwardCtx {
            branch: Some(branch.to_vec()),
            ..Default::default()
        };
        let out = unet.forward(sample, timesteps, embeddings, &ctx)?;
        if self.store.pending() != 0 {
            let n = self.store.pending();
            self.store.clear();
            return Err(Error::invalid(format!(
                "BCM: {n} recorded reference states were not used by the main pass"
            )));
        }
        Ok(out)
    }

    /// Parameter counts for a UNet / text-encoder shape, without allocating any weight (SD-1.5
    /// size included).
    pub fn parameter_counts(
        unet: &crate::sd::unet::UNetConfig,
        clip: &crate::sd::clip::ClipTextConfig,
        config: &DualConfig,
    ) -> Result<DualParameterCounts> {
        let dev = Device::Cpu;
        let u = UNet2DConditionModel::new(unet, &Params::shapes_only(&dev))?;
        let mut c = DualParameterCounts::default();
        let r = config.rank;
        for info in u.attention_infos() {
            let inner = info.heads * info.head_dim;
            let per_set = r * (info.query_dim + inner) // to_q
                + 2 * r * (info.context_dim + inner) // to_k, to_v
                + r * (inner + info.query_dim); // to_out.0
            c.unet_lora += 2 * per_set;
            if config.saim {
                c.saim += SaimLayer::parameter_count(info.query_dim);
            }
            if config.bcm && info.kind == AttnKind::SelfAttn {
                c.bcm += BcmLayer::parameter_count(info.query_dim, config.bcm_hidden);
            }
        }
        if config.text_encoder_lora {
            let d = clip.hidden_size;
            c.text_encoder_lora = clip.num_hidden_layers * 4 * r * (d + d);
        }
        Ok(c)
    }
}
