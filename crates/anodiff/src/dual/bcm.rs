//! Background Compensation Module (BCM, METHODS.md A.5): "reference-only" attention that lets the
//! whole-image branch see a background image, so the object and its surroundings stay intact.
//!
//! 1. A **reference pass** runs the UNet on the noised latent of the background image (whole-image
//!    LoRA, whole-image prompt, no SAIM); every self-attention layer (`attn1`) records its input
//!    hidden states `h_ref` in a [`ReferenceStore`].
//! 2. In the **main pass**, for whole-image rows only, `attn1` computes keys and values from
//!    `fuse(h, MLP(h_ref))` (queries still from `h`), with `MLP = Linear(C, 320) → Linear(320, C)`
//!    and the fusion either the paper's `h + γ·MLP(h_ref)` (γ learnable, init 0.1) or the reference
//!    code's `(1 − a)·h + a·MLP(h_ref)` (a learnable, init 0).
//!
//! Row mapping: the k-th whole-image row (branch 0) of the main batch uses the k-th row of the
//! reference batch. Each recorded state is consumed by the main pass that uses it, so a stale
//! reference can never leak into a later step.

use crate::error::{Error, Result};
use crate::nn::params::Init;
use crate::nn::{Linear, Params};
use crate::sd::attention::{AttnCall, AttnKind, AttnProcessor, PassKind};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// How the background features are mixed into the keys/values of the whole-image rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// `h + γ·MLP(h_ref)`, γ init 0.1 (the paper).
    #[default]
    Paper,
    /// `(1 − a)·h + a·MLP(h_ref)`, a init 0 (the reference code).
    Code,
}

impl Fusion {
    /// Initial value of the learnable gate (γ or a).
    pub fn gate_init(self) -> f64 {
        match self {
            Fusion::Paper => 0.1,
            Fusion::Code => 0.0,
        }
    }

    /// Parses `paper` | `code`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Fusion::Paper),
            "code" => Ok(Fusion::Code),
            other => Err(Error::invalid(format!(
                "unknown BCM fusion `{other}` (known: paper, code)"
            ))),
        }
    }
}

/// The BCM weights of one self-attention layer.
pub struct BcmLayer {
    mlp_in: Linear,
    mlp_out: Linear,
    /// γ (paper) or a (code), shape `[1]`.
    gate: Tensor,
    fusion: Fusion,
}

impl BcmLayer {
    /// Loads or creates `temporal_condition_mlp.{0,1}` and `temporal_a` under `p`.
    pub fn new(p: &Params, channels: usize, hidden: usize, fusion: Fusion) -> Result<Self> {
        let mlp = p.pp("temporal_condition_mlp");
        Ok(Self {
            mlp_in: Linear::new(&mlp.pp("0"), channels, hidden, true)?,
            mlp_out: Linear::new(&mlp.pp("1"), hidden, channels, true)?,
            gate: p.get(&[1], "temporal_a", Init::Constant(fusion.gate_init()))?,
            fusion,
        })
    }

    /// Parameters of one layer: the two linears and the scalar gate.
    pub fn parameter_count(channels: usize, hidden: usize) -> usize {
        2 * channels * hidden + hidden + channels + 1
    }

    /// Keys/values source for a main-pass batch. `h: [B, T, C]`, `h_ref: [R, T, C]` with R = the
    /// number of rows whose `branch` is 0; rows of other branches keep `h`.
    pub fn fuse(&self, h: &Tensor, h_ref: &Tensor, branch: &[usize]) -> Result<Tensor> {
        let whole: Vec<u32> = (0..branch.len() as u32)
            .filter(|&i| branch[i as usize] == 0)
            .collect();
        let (rows, _, _) = h.dims3()?;
        if branch.len() != rows || h_ref.dim(0)? != whole.len() {
            return Err(Error::invalid(format!(
                "BCM: {} reference rows for {} whole-image rows (batch {rows}, branch {branch:?})",
                h_ref.dim(0)?,
                whole.len()
            )));
        }
        let m = self.mlp_out.forward(&self.mlp_in.forward(h_ref)?)?;
        // Row i of the batch takes reference row k(i) (its rank among the whole rows); part rows
        // take any row and are masked out.
        let mut k = 0u32;
        let map: Vec<u32> = branch
            .iter()
            .map(|&b| {
                let r = k.min(whole.len().saturating_sub(1) as u32);
                if b == 0 {
                    k += 1;
                }
                r
            })
            .collect();
        let map = Tensor::new(map.as_slice(), h.device())?;
        let m = m.index_select(&map, 0)?;
        let mask: Vec<f32> = branch
            .iter()
            .map(|&b| if b == 0 { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::new(mask.as_slice(), h.device())?
            .to_dtype(h.dtype())?
            .reshape((rows, 1, 1))?;
        let gate = self.gate.to_dtype(h.dtype())?;
        let delta = match self.fusion {
            Fusion::Paper => m.broadcast_mul(&gate)?,
            Fusion::Code => (m - h)?.broadcast_mul(&gate)?,
        };
        Ok((h + delta.broadcast_mul(&mask)?)?)
    }
}

/// Hidden states recorded by a reference pass, by attention-layer index, waiting for the main pass.
///
/// Kept per thread: a reference pass and its main pass run on one thread, and the micro-batches
/// of one training update may run side by side on several ([`crate::runtime::Lanes`]) through the
/// same model, so one thread's states must not be taken or cleared by another's passes.
#[derive(Default)]
pub struct ReferenceStore {
    states: Mutex<HashMap<(ThreadId, usize), Tensor>>,
}

impl ReferenceStore {
    /// Drops anything this thread recorded (before a new reference pass, or to run a main pass
    /// without BCM).
    pub fn clear(&self) {
        let me = std::thread::current().id();
        self.states.lock().unwrap().retain(|k, _| k.0 != me);
    }

    /// Number of layers whose state this thread recorded and has not yet consumed.
    pub fn pending(&self) -> usize {
        let me = std::thread::current().id();
        self.states
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.0 == me)
            .count()
    }

    fn record(&self, layer: usize, h: Tensor) {
        let me = std::thread::current().id();
        self.states.lock().unwrap().insert((me, layer), h);
    }

    fn take(&self, layer: usize) -> Option<Tensor> {
        let me = std::thread::current().id();
        self.states.lock().unwrap().remove(&(me, layer))
    }
}

/// BCM as the `kv_source` stage of one `attn1` processor: records in reference passes, fuses in
/// main passes when a reference was recorded (otherwise plain self-attention: BCM off).
pub struct BcmProcessor {
    /// This layer's weights.
    pub layer: Arc<BcmLayer>,
    /// Shared by all layers of the model.
    pub store: Arc<ReferenceStore>,
}

impl AttnProcessor for BcmProcessor {
    fn kv_source(&self, call: &AttnCall, hidden: &Tensor, kv: Tensor) -> Result<Tensor> {
        if call.layer.kind != AttnKind::SelfAttn {
            return Ok(kv);
        }
        match call.ctx.pass {
            PassKind::Reference => {
                self.store.record(call.layer.index, hidden.clone());
                Ok(kv)
            }
            PassKind::Main => match self.store.take(call.layer.index) {
                Some(h_ref) => {
                    let n = hidden.dim(0)?;
                    let all_whole = vec![0; n];
                    let branch = call.ctx.branch.as_deref().unwrap_or(&all_whole);
                    self.layer
                        .fuse(hidden, &h_ref.to_dtype(hidden.dtype())?, branch)
                }
                None => Ok(kv),
            },
        }
    }
}
