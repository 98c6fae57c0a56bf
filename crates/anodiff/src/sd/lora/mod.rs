//! LoRA (low-rank adaptation) for the UNet and the CLIP text encoder, with several independent
//! sets per layer routed per batch row (DualAnoDiff's whole/part branches).
//!
//! - [`layer`]: the weights of one target linear (`down [r, in]`, `up [out, r]`, scale, dropout)
//!   and the per-row routing of sets by `ForwardCtx::branch`.
//! - [`processor`]: UNet attention layers, through the `linear` stage of the processor hook.
//! - [`adapter`]: any named `Linear` (CLIP `q_proj|k_proj|v_proj|out_proj`), through its adapter slot.
//! - [`install`]: [`Lora`], which targets layers by regex, installs, saves/loads and lists `Var`s.
//! - [`io`]: diffusers/peft and kohya-ss safetensors files.
//! - [`merge`]: folding a set into the base weights (`W + scale·up@down`).
//! - [`apply`]: a LoRA file installed into a model for sampling ([`apply_file`]).
//!
//! Several sets and files: a file holds ONE set in plain diffusers/peft names (so diffusers and
//! other tools can load it); set `k` is saved with `Lora::save(path, k)` to its own file and
//! loaded back with `Lora::load_set(path, k)`. Trainable variables are named like peft's
//! internal parameters with the set as adapter name: `unet.<module>.lora_A.set<k>.weight`.

pub mod adapter;
pub mod apply;
pub mod install;
pub mod io;
pub mod layer;
pub mod merge;
pub mod processor;

pub use adapter::LoraLinearAdapter;
pub use apply::{apply_file, AppliedLora};
pub use install::Lora;
pub use io::{LoraComponent, LoraEntry};
pub use layer::{LoraLayer, LoraSet};
pub use processor::LoraAttnProcessor;

/// UNet attention projections (diffusers names).
pub const UNET_TARGETS: &str = r"to_q|to_k|to_v|to_out\.0";
/// CLIP text-encoder attention projections (transformers names).
pub const CLIP_TARGETS: &str = r"q_proj|k_proj|v_proj|out_proj";

/// How to create fresh LoRA weights.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    /// Rank r of `down: [r, in]` and `up: [out, r]`.
    pub rank: usize,
    /// Scale = alpha / rank; `None` means scale 1.
    pub alpha: Option<f64>,
    /// Dropout probability on the input of `down`, applied only in training mode.
    pub dropout: f64,
    /// Regex that must match a trailing, dot-aligned part of a layer's module name
    /// (`to_q` matches `….attn1.to_q`; `down_blocks\.0\..*to_q` selects one block).
    pub targets: String,
    /// Number of independent sets per layer (row `i` uses set `ForwardCtx::branch[i]`).
    pub sets: usize,
    /// Seed of the fresh `down` weights (each layer's values also depend on its name).
    pub seed: u64,
}

impl LoraConfig {
    /// Defaults for the UNet (`to_q|to_k|to_v|to_out.0`), one set, no dropout, alpha = rank.
    pub fn unet(rank: usize) -> Self {
        Self {
            rank,
            alpha: None,
            dropout: 0.0,
            targets: UNET_TARGETS.to_string(),
            sets: 1,
            seed: 0,
        }
    }

    /// Defaults for the CLIP text encoder (`q_proj|k_proj|v_proj|out_proj`).
    pub fn clip(rank: usize) -> Self {
        Self {
            targets: CLIP_TARGETS.to_string(),
            ..Self::unet(rank)
        }
    }

    /// `alpha / rank`, or 1 without `alpha`.
    pub fn scale(&self) -> f64 {
        self.alpha.map_or(1.0, |a| a / self.rank as f64)
    }
}
