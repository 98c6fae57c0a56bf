//! [`Lora`]: the LoRA layers of one model (UNet or CLIP text encoder) — creation by regex target,
//! installation into the model, files, trainable variables.

use super::adapter::LoraLinearAdapter;
use super::io::{self, LayerDims, LoraComponent, LoraEntry};
use super::layer::{LoraLayer, LoraSet};
use super::processor::LoraAttnProcessor;
use super::LoraConfig;
use crate::error::{Error, Result};
use crate::sd::attention::{HasAttention, Proj};
use crate::sd::clip::ClipTextModel;
use candle_core::{Device, Var};
use regex::Regex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A targetable linear of a model: canonical module name, dims, and (UNet) where it sits.
struct Target {
    module: String,
    in_dim: usize,
    out_dim: usize,
    device: Device,
    attn: Option<(String, Proj)>,
}

fn unet_targets(unet: &dyn HasAttention) -> Vec<Target> {
    let mut v = Vec::new();
    unet.visit_attention(&mut |a| {
        for p in Proj::ALL {
            let l = a.proj(p);
            v.push(Target {
                module: format!("{}.{}", a.info.name, p.suffix()),
                in_dim: l.in_dim(),
                out_dim: l.out_dim(),
                device: l.weight.device().clone(),
                attn: Some((a.info.name.clone(), p)),
            });
        }
    });
    v
}

fn clip_targets(clip: &ClipTextModel) -> Vec<Target> {
    let mut v = Vec::new();
    clip.visit_linears(&mut |l| {
        v.push(Target {
            module: LoraComponent::TextEncoder.canonical(&l.name),
            in_dim: l.in_dim(),
            out_dim: l.out_dim(),
            device: l.weight.device().clone(),
            attn: None,
        })
    });
    v
}

fn dims(targets: &[Target]) -> LayerDims {
    targets
        .iter()
        .map(|t| (t.module.clone(), (t.in_dim, t.out_dim)))
        .collect()
}

/// The LoRA of one model. Cheap to share: layers are `Arc`s holding `Var`s.
pub struct Lora {
    /// Which model it adapts.
    pub component: LoraComponent,
    /// In model order.
    layers: Vec<Arc<LoraLayer>>,
    /// UNet: attention layer name and projection of each entry of `layers`.
    slots: Vec<Option<(String, Proj)>>,
    sets: usize,
    training: Arc<AtomicBool>,
}

impl Lora {
    /// Fresh LoRA on the UNet attention projections whose names match `cfg.targets`, installed as
    /// the processor of each targeted attention layer (replacing the previous one; to combine
    /// with other processors use [`Lora::new_unet`] + [`Lora::unet_processor`] in a `ProcessorStack`).
    pub fn attach_unet(unet: &dyn HasAttention, cfg: &LoraConfig) -> Result<Self> {
        let l = Self::new_unet(unet, cfg)?;
        l.install_unet(unet);
        Ok(l)
    }

    /// Fresh LoRA on the CLIP projections matching `cfg.targets`, installed in their adapter slots.
    pub fn attach_clip(clip: &ClipTextModel, cfg: &LoraConfig) -> Result<Self> {
        let l = Self::new_clip(clip, cfg)?;
        l.install_clip(clip);
        Ok(l)
    }

    /// Reads a LoRA file (diffusers/peft or kohya) for the UNet and installs it (one set).
    pub fn load_unet(unet: &dyn HasAttention, path: &Path) -> Result<Self> {
        let l = Self::read_unet(unet, path)?;
        l.install_unet(unet);
        Ok(l)
    }

    /// Reads the text-encoder part of a LoRA file and installs it (one set).
    pub fn load_clip(clip: &ClipTextModel, path: &Path) -> Result<Self> {
        let l = Self::read_clip(clip, path)?;
        l.install_clip(clip);
        Ok(l)
    }

    /// Like [`Lora::attach_unet`] without installing.
    pub fn new_unet(unet: &dyn HasAttention, cfg: &LoraConfig) -> Result<Self> {
        Self::fresh(LoraComponent::Unet, unet_targets(unet), cfg)
    }

    /// Like [`Lora::attach_clip`] without installing.
    pub fn new_clip(clip: &ClipTextModel, cfg: &LoraConfig) -> Result<Self> {
        Self::fresh(LoraComponent::TextEncoder, clip_targets(clip), cfg)
    }

    /// Like [`Lora::load_unet`] without installing.
    pub fn read_unet(unet: &dyn HasAttention, path: &Path) -> Result<Self> {
        Self::from_file(LoraComponent::Unet, unet_targets(unet), path)
    }

    /// Like [`Lora::load_clip`] without installing.
    pub fn read_clip(clip: &ClipTextModel, path: &Path) -> Result<Self> {
        Self::from_file(LoraComponent::TextEncoder, clip_targets(clip), path)
    }

    /// Like [`Lora::read_unet`], but keys of layers this LoRA cannot target (kohya files often
    /// also adapt `ff`, `proj_in`, convolutions) are returned instead of being an error.
    pub fn read_unet_lenient(unet: &dyn HasAttention, path: &Path) -> Result<(Self, Vec<String>)> {
        let mut skipped = Vec::new();
        let l = Self::from_file_with(
            LoraComponent::Unet,
            unet_targets(unet),
            path,
            Some(&mut skipped),
        )?;
        Ok((l, skipped))
    }

    /// Like [`Lora::read_clip`], returning the keys of non-targetable layers (e.g. `mlp.fc1`).
    pub fn read_clip_lenient(clip: &ClipTextModel, path: &Path) -> Result<(Self, Vec<String>)> {
        let mut skipped = Vec::new();
        let l = Self::from_file_with(
            LoraComponent::TextEncoder,
            clip_targets(clip),
            path,
            Some(&mut skipped),
        )?;
        Ok((l, skipped))
    }

    fn fresh(component: LoraComponent, targets: Vec<Target>, cfg: &LoraConfig) -> Result<Self> {
        if cfg.sets == 0 {
            return Err(Error::invalid("LoRA config: `sets` must be at least 1"));
        }
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{})$", cfg.targets)).map_err(|e| {
            Error::invalid(format!(
                "LoRA targets `{}` is not a regex: {e}",
                cfg.targets
            ))
        })?;
        let training = Arc::new(AtomicBool::new(false));
        let (mut layers, mut slots) = (Vec::new(), Vec::new());
        for t in targets.into_iter().filter(|t| re.is_match(&t.module)) {
            layers.push(Arc::new(LoraLayer::fresh(
                &t.module,
                t.in_dim,
                t.out_dim,
                cfg.rank,
                cfg.scale(),
                cfg.sets,
                cfg.dropout,
                cfg.seed,
                training.clone(),
                &t.device,
            )?));
            slots.push(t.attn);
        }
        if layers.is_empty() {
            return Err(Error::invalid(format!(
                "LoRA targets `{}` match no layer of the {}",
                cfg.targets,
                component.prefix()
            )));
        }
        Ok(Self {
            component,
            layers,
            slots,
            sets: cfg.sets,
            training,
        })
    }

    fn from_file(component: LoraComponent, targets: Vec<Target>, path: &Path) -> Result<Self> {
        Self::from_file_with(component, targets, path, None)
    }

    fn from_file_with(
        component: LoraComponent,
        targets: Vec<Target>,
        path: &Path,
        skipped: Option<&mut Vec<String>>,
    ) -> Result<Self> {
        let device = targets
            .first()
            .map(|t| t.device.clone())
            .unwrap_or(Device::Cpu);
        let mut entries: std::collections::HashMap<String, LoraEntry> =
            io::read_lora(path, component, &dims(&targets), &device, skipped)?
                .into_iter()
                .map(|e| (e.module.clone(), e))
                .collect();
        let training = Arc::new(AtomicBool::new(false));
        let (mut layers, mut slots) = (Vec::new(), Vec::new());
        for t in targets {
            let Some(e) = entries.remove(&t.module) else {
                continue;
            };
            let set = LoraSet::new(
                Var::from_tensor(&e.down)?,
                Var::from_tensor(&e.up)?,
                e.scale,
            );
            layers.push(Arc::new(LoraLayer::from_sets(
                &t.module,
                t.in_dim,
                t.out_dim,
                vec![set],
                0.0,
                0,
                training.clone(),
            )?));
            slots.push(t.attn);
        }
        Ok(Self {
            component,
            layers,
            slots,
            sets: 1,
            training,
        })
    }

    /// Every LoRA layer, in model order.
    pub fn layers(&self) -> &[Arc<LoraLayer>] {
        &self.layers
    }

    /// Independent sets per layer.
    pub fn num_sets(&self) -> usize {
        self.sets
    }

    /// Training mode turns dropout on.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    /// The processor holding this LoRA's layers for the attention layer `attn_name`, if any.
    pub fn unet_processor(&self, attn_name: &str) -> Option<Arc<LoraAttnProcessor>> {
        let mut p = LoraAttnProcessor::default();
        for (l, s) in self.layers.iter().zip(&self.slots) {
            if let Some((name, proj)) = s {
                if name == attn_name {
                    *p.slot(*proj) = Some(l.clone());
                }
            }
        }
        (!p.is_empty()).then(|| Arc::new(p))
    }

    /// Sets a [`LoraAttnProcessor`] on every attention layer this LoRA targets.
    pub fn install_unet(&self, unet: &dyn HasAttention) {
        unet.visit_attention(&mut |a| {
            if let Some(p) = self.unet_processor(&a.info.name) {
                a.set_processor(p);
            }
        });
    }

    /// Puts the default processor back on the targeted attention layers.
    pub fn remove_unet(&self, unet: &dyn HasAttention) {
        unet.visit_attention(&mut |a| {
            if self.unet_processor(&a.info.name).is_some() {
                a.set_processor(Arc::new(crate::sd::attention::DefaultProcessor));
            }
        });
    }

    /// Fills the adapter slot of every targeted CLIP linear (set 0 active; see
    /// [`LoraLinearAdapter::set_active`]). Returns the adapters installed.
    pub fn install_clip(&self, clip: &ClipTextModel) -> Vec<Arc<LoraLinearAdapter>> {
        let mut installed = Vec::new();
        clip.visit_linears(&mut |lin| {
            let m = LoraComponent::TextEncoder.canonical(&lin.name);
            if let Some(l) = self.layers.iter().find(|l| l.module == m) {
                let a = Arc::new(LoraLinearAdapter::new(l.clone()));
                lin.set_adapter(Some(a.clone()));
                installed.push(a);
            }
        });
        installed
    }

    /// Empties the adapter slots of the targeted CLIP linears.
    pub fn remove_clip(&self, clip: &ClipTextModel) {
        clip.visit_linears(&mut |lin| {
            let m = LoraComponent::TextEncoder.canonical(&lin.name);
            if self.layers.iter().any(|l| l.module == m) {
                lin.set_adapter(None);
            }
        });
    }

    /// All trainable variables, peft-style: `<component>.<module>.lora_{A,B}.set<k>.weight`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for l in &self.layers {
            let name = io::file_module(self.component, &l.module);
            for (k, s) in l.sets.iter().enumerate() {
                v.push((format!("{name}.lora_A.set{k}.weight"), s.down.clone()));
                v.push((format!("{name}.lora_B.set{k}.weight"), s.up.clone()));
            }
        }
        v
    }

    /// The variables of one set under the names it has in a file (`….lora_A.weight`).
    pub fn vars_of_set(&self, set: usize) -> Result<Vec<(String, Var)>> {
        self.check_set(set)?;
        let mut v = Vec::new();
        for l in &self.layers {
            let name = io::file_module(self.component, &l.module);
            v.push((format!("{name}.lora_A.weight"), l.sets[set].down.clone()));
            v.push((format!("{name}.lora_B.weight"), l.sets[set].up.clone()));
        }
        Ok(v)
    }

    fn check_set(&self, set: usize) -> Result<()> {
        if set >= self.sets {
            return Err(Error::invalid(format!(
                "LoRA set {set} requested, this LoRA has {} set(s)",
                self.sets
            )));
        }
        Ok(())
    }

    /// Set `set` as file entries (current values).
    pub fn entries(&self, set: usize) -> Result<Vec<LoraEntry>> {
        self.check_set(set)?;
        Ok(self
            .layers
            .iter()
            .map(|l| {
                let s = &l.sets[set];
                LoraEntry {
                    module: l.module.clone(),
                    down: s.down.as_tensor().detach(),
                    up: s.up.as_tensor().detach(),
                    scale: s.scale(),
                }
            })
            .collect())
    }

    /// Writes set `set` as a diffusers/peft LoRA file (atomically).
    pub fn save(&self, path: &Path, set: usize) -> Result<()> {
        io::write_lora(path, &[(self.component, self.entries(set)?)])
    }

    /// Writes one set of each of several LoRAs (e.g. UNet and text encoder) into one file.
    pub fn save_many(path: &Path, parts: &[(&Lora, usize)]) -> Result<()> {
        let parts = parts
            .iter()
            .map(|(l, s)| Ok((l.component, l.entries(*s)?)))
            .collect::<Result<Vec<_>>>()?;
        io::write_lora(path, &parts)
    }

    /// Overwrites set `set` with the weights of a file. The file must hold exactly this LoRA's
    /// layers with the same ranks; its alpha replaces the set's scale.
    pub fn load_set(&self, path: &Path, set: usize) -> Result<()> {
        self.check_set(set)?;
        let (dims, device): (LayerDims, Device) = (
            self.layers
                .iter()
                .map(|l| (l.module.clone(), (l.in_dim, l.out_dim)))
                .collect(),
            self.layers[0].sets[0].down.device().clone(),
        );
        let mut entries: std::collections::HashMap<String, LoraEntry> =
            io::read_lora(path, self.component, &dims, &device, None)?
                .into_iter()
                .map(|e| (e.module.clone(), e))
                .collect();
        for l in &self.layers {
            let e = entries.remove(&l.module).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: no LoRA weights for `{}`",
                    path.display(),
                    io::file_module(self.component, &l.module)
                ))
            })?;
            let s = &l.sets[set];
            if e.down.dims() != s.down.dims() {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: format!(
                        "{}.lora_A.weight",
                        io::file_module(self.component, &l.module)
                    ),
                    expected: s.down.dims().to_vec(),
                    found: e.down.dims().to_vec(),
                });
            }
            s.down.set(&e.down)?;
            s.up.set(&e.up)?;
            s.set_scale(e.scale);
        }
        Ok(())
    }
}
