//! The LoRA weights of one target linear layer: one or more independent sets, each
//! `scale · up(down(dropout(x)))` with `down: [r, in]`, `up: [out, r]`, routed per batch row.

use crate::error::{Error, Result};
use crate::kernels::lowrank;
use crate::nn::params::gaussian;
use crate::nn::Linear;
use crate::seed;
use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One LoRA set of one layer. `down`/`up` are trainable `Var`s; the scale is `alpha / rank`.
pub struct LoraSet {
    /// `[r, in]`.
    pub down: Var,
    /// `[out, r]`.
    pub up: Var,
    scale: RwLock<f64>,
}

impl LoraSet {
    /// A set from existing weights.
    pub fn new(down: Var, up: Var, scale: f64) -> Self {
        Self {
            down,
            up,
            scale: RwLock::new(scale),
        }
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.down.as_tensor().dims()[0]
    }

    /// Current scale of the term.
    pub fn scale(&self) -> f64 {
        *self.scale.read().unwrap()
    }

    /// Changes the scale (e.g. to sample with a weaker LoRA).
    pub fn set_scale(&self, s: f64) {
        *self.scale.write().unwrap() = s;
    }

    /// `scale · up @ down`, the `[out, in]` change of the base weight.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        self.up.as_tensor().matmul(self.down.as_tensor())? * self.scale()
    }
}

/// LoRA of one linear layer (`module` is its diffusers path inside the component, e.g.
/// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
pub struct LoraLayer {
    /// The adapted layer's module name.
    pub module: String,
    /// Input features of the layer.
    pub in_dim: usize,
    /// Output features of the layer.
    pub out_dim: usize,
    /// The independent sets (one per branch).
    pub sets: Vec<LoraSet>,
    dropout: f64,
    training: Arc<AtomicBool>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl LoraLayer {
    /// Fresh sets: `down ~ N(0, (1/r)²)` (std 1/r), `up = 0`, so the layer starts as the identity
    /// change. Each set's values depend only on `seed`, the module name and the set index.
    #[allow(clippy::too_many_arguments)]
    pub fn fresh(
        module: &str,
        in_dim: usize,
        out_dim: usize,
        rank: usize,
        scale: f64,
        sets: usize,
        dropout: f64,
        seed: u64,
        training: Arc<AtomicBool>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if rank == 0 {
            return Err(Error::invalid(format!(
                "LoRA rank must be positive ({module})"
            )));
        }
        let sets = (0..sets)
            .map(|s| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(set_seed(seed, module, s));
                let std = 1.0 / rank as f64;
                let v: Vec<f32> = (0..rank * in_dim)
                    .map(|_| (gaussian(&mut rng) * std) as f32)
                    .collect();
                let down = Var::from_tensor(&Tensor::from_vec(v, (rank, in_dim), device)?)?;
                let up = Var::zeros((out_dim, rank), DType::F32, device)?;
                Ok(LoraSet::new(down, up, scale))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_sets(module, in_dim, out_dim, sets, dropout, seed, training)
    }

    /// A layer from existing sets, checking their shapes against `[out_dim, in_dim]`.
    pub fn from_sets(
        module: &str,
        in_dim: usize,
        out_dim: usize,
        sets: Vec<LoraSet>,
        dropout: f64,
        seed: u64,
        training: Arc<AtomicBool>,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::invalid(format!(
                "LoRA dropout must be in [0, 1), got {dropout}"
            )));
        }
        for (i, s) in sets.iter().enumerate() {
            let (d, u) = (s.down.as_tensor().dims(), s.up.as_tensor().dims());
            if d.len() != 2 || u.len() != 2 || d[1] != in_dim || u[0] != out_dim || u[1] != d[0] {
                return Err(Error::invalid(format!(
                    "LoRA `{module}` set {i}: down {d:?} / up {u:?} do not fit a [{out_dim}, {in_dim}] layer"
                )));
            }
        }
        Ok(Self {
            module: module.to_string(),
            in_dim,
            out_dim,
            sets,
            dropout,
            training,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(set_seed(
                seed,
                module,
                usize::MAX,
            ))),
        })
    }

    /// Inverted dropout on the input of `down`, only while training.
    fn dropout(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.dropout == 0.0 || !self.training.load(Ordering::Relaxed) {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.dropout;
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap();
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        x.mul(&Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?)
    }

    /// `scale · up(down(x))` of one set, over the last dimension of `x`.
    fn set_delta(&self, set: &LoraSet, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let h = x.reshape((rows, self.in_dim))?;
        let y = h
            .matmul(&set.down.as_tensor().t()?)?
            .matmul(&set.up.as_tensor().t()?)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.out_dim;
        y.reshape(out)? * set.scale()
    }

    /// The LoRA change of the output for input `x: [B, …, in]`. `branch[row]` picks each row's set
    /// (None: set 0 for every row). Rows never see another set's weights: each set's term is
    /// multiplied by a 0/1 row mask, which also keeps gradients separate.
    pub fn delta(&self, x: &Tensor, branch: Option<&[usize]>) -> candle_core::Result<Tensor> {
        if x.rank() == 0 || x.dim(candle_core::D::Minus1)? != self.in_dim {
            candle_core::bail!(
                "LoRA `{}`: input of shape {:?}, expected [.., {}]",
                self.module,
                x.dims(),
                self.in_dim
            );
        }
        let x = self.dropout(x)?;
        let b = x.dims()[0];
        let Some(branch) = branch else {
            return self.set_delta(&self.sets[0], &x);
        };
        if branch.len() != b {
            candle_core::bail!(
                "LoRA `{}`: ForwardCtx::branch has {} entries for a batch of {b}",
                self.module,
                branch.len()
            );
        }
        if let Some(&bad) = branch.iter().find(|&&s| s >= self.sets.len()) {
            candle_core::bail!(
                "LoRA `{}`: branch {bad} but only {} set(s)",
                self.module,
                self.sets.len()
            );
        }
        if branch.iter().all(|&s| s == branch[0]) {
            return self.set_delta(&self.sets[branch[0]], &x);
        }
        let mut mask_shape = vec![1usize; x.rank()];
        mask_shape[0] = b;
        let mut total: Option<Tensor> = None;
        for (s, set) in self.sets.iter().enumerate() {
            if !branch.contains(&s) {
                continue;
            }
            let m: Vec<f32> = branch.iter().map(|&r| (r == s) as u8 as f32).collect();
            let m = Tensor::from_vec(m, mask_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
            let d = self.set_delta(set, &x)?.broadcast_mul(&m)?;
            total = Some(match total {
                Some(t) => (t + d)?,
                None => d,
            });
        }
        Ok(total.expect("branch is non-empty"))
    }

    /// The adapted layer `base(x) + delta(x)`. Where every row uses one set and dropout is off, this
    /// is one fused op over the frozen base weights (see `kernels::lowrank`: no retained base
    /// output or low-rank product, no base-weight gradient); otherwise the base output plus
    /// [`Self::delta`].
    pub fn forward_linear(
        &self,
        base: &Linear,
        x: &Tensor,
        branch: Option<&[usize]>,
    ) -> candle_core::Result<Tensor> {
        if let Some(set) = self.single_set(x, branch) {
            let (down, up) = (set.down.as_tensor(), set.up.as_tensor());
            let fused = lowrank::linear_lowrank(
                x,
                &base.weight,
                base.bias.as_ref(),
                down,
                up,
                set.scale(),
            )?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        self.apply(x, base.forward_base(x)?, branch)
    }

    /// The one set every row of `x` uses, when the LoRA term needs no row masks or dropout.
    fn single_set(&self, x: &Tensor, branch: Option<&[usize]>) -> Option<&LoraSet> {
        let dropout = self.dropout > 0.0 && self.training.load(Ordering::Relaxed);
        if dropout || x.dims().first().is_none_or(|&b| b == 0) {
            return None;
        }
        let set = match branch {
            None => 0,
            Some(br) if br.len() == x.dims()[0] && br.iter().all(|&s| s == br[0]) => br[0],
            Some(_) => return None,
        };
        self.sets.get(set)
    }

    /// Adds the routed LoRA change to a base output.
    pub fn apply(
        &self,
        input: &Tensor,
        output: Tensor,
        branch: Option<&[usize]>,
    ) -> candle_core::Result<Tensor> {
        if input.dims().first() == Some(&0) {
            return Ok(output);
        }
        output + self.delta(input, branch)?
    }
}

/// The seed of one set's initial weights (or, with `set = usize::MAX`, of the dropout stream):
/// [`seed::mix`] over (seed, module name, set): fixed bits, unlike std's hasher, whose output
/// may change between Rust releases.
fn set_seed(seed: u64, module: &str, set: usize) -> u64 {
    seed::mix(seed::mix(seed) ^ seed::mix_bytes(module.as_bytes()) ^ seed::mix(set as u64 ^ 0x10A))
}
