//! AdamW with decoupled weight decay and bias correction, step for step as `torch.optim.AdamW`
//! (amsgrad off, single-tensor path): decay `p ← p·(1 − lr·wd)`, moments `m ← m + (1−β1)(g − m)`,
//! `v ← β2·v + (1−β2)·g²`, update `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)`.
//! State (m, v, step) exists only for the variables the optimiser was given, i.e. the trainable
//! ones; a variable whose gradient is None in a step is left untouched, as torch does.

use super::grads::Grads;
use crate::error::{Error, Result};
use crate::kernels::{self, adamw, adamw::AdamWScalars};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// AdamW hyper-parameters (torch's names and defaults, lr aside).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults except the learning rate (1e-4, a usual fine-tuning value).
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

struct Slot {
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// AdamW over a named list of `Var`s, with per-variable state.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimiser over `vars` (names must be unique; values f32).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in &vars {
            if !seen.insert(name.as_str()) {
                return Err(Error::invalid(format!(
                    "trainable variable `{name}` is listed twice"
                )));
            }
            if var.dtype() != DType::F32 {
                return Err(Error::invalid(format!(
                    "trainable variable `{name}` is {:?}; the optimiser needs f32",
                    var.dtype()
                )));
            }
            // Two allocations: the moments are updated in place, so they must not share storage.
            slots.push(Slot {
                m: var.as_tensor().zeros_like()?,
                v: var.as_tensor().zeros_like()?,
                step: 0,
            });
        }
        Ok(Self { cfg, vars, slots })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The optimised variables, in state order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with learning rate `lr` (the schedule's value for this step; the configured `lr`
    /// is not used here). `grads` must be aligned with `vars()`.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::invalid(format!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        let c = &self.cfg;
        for (i, ((_, var), slot)) in self.vars.iter().zip(self.slots.iter_mut()).enumerate() {
            let Some(g) = grads.get(i) else { continue };
            slot.step += 1;
            let t = slot.step as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            let p = var.as_tensor();
            if kernels::enabled() && adamw::supported(p, g, &slot.m, &slot.v) {
                let s = AdamWScalars {
                    decay: (c.weight_decay != 0.0).then_some(1.0 - lr * c.weight_decay),
                    one_minus_beta1: 1.0 - c.beta1,
                    beta2: c.beta2,
                    one_minus_beta2: 1.0 - c.beta2,
                    inv_sqrt_bc2: 1.0 / bc2.sqrt(),
                    eps: c.eps,
                    step: -lr / bc1,
                };
                adamw::update(p, g, &slot.m, &slot.v, s)?;
                continue;
            }
            // The same arithmetic as tensor expressions (other devices, `ANODIFF_KERNELS=candle`).
            let p = var.as_detached_tensor();
            let p = if c.weight_decay != 0.0 {
                (p * (1.0 - lr * c.weight_decay))?
            } else {
                p
            };
            let m = (&slot.m + ((g - &slot.m)? * (1.0 - c.beta1))?)?;
            // torch: v·β2 first, then += (1−β2)·g²; keep that order.
            let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let upd = ((&m / &denom)? * (-lr / bc1))?;
            var.set(&(p + upd)?)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// The moment tensors by name: `exp_avg.<var>` and `exp_avg_sq.<var>` (torch's state keys).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for ((name, _), s) in self.vars.iter().zip(&self.slots) {
            // Snapshots: the live moments are updated in place by the next step.
            out.push((format!("exp_avg.{name}"), s.m.copy()?));
            out.push((format!("exp_avg_sq.{name}"), s.v.copy()?));
        }
        Ok(out)
    }

    /// Per-variable update counts.
    pub fn state_steps(&self) -> Vec<(String, u64)> {
        self.vars
            .iter()
            .zip(&self.slots)
            .map(|((n, _), s)| (n.clone(), s.step))
            .collect()
    }

    /// Restores the state saved by `state_tensors` / `state_steps`; every variable must be present
    /// with its own shape (`origin` names the source in errors).
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
        origin: &str,
    ) -> Result<()> {
        let mut slots = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let get = |key: String| -> Result<Tensor> {
                let t = tensors.get(&key).ok_or_else(|| Error::MissingTensor {
                    name: key.clone(),
                    looked_in: origin.to_string(),
                })?;
                if t.dims() != var.dims() {
                    return Err(Error::ShapeMismatch {
                        path: origin.into(),
                        name: key,
                        expected: var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                Ok(t.to_dtype(DType::F32)?.to_device(var.device())?)
            };
            let step = *steps.get(name).ok_or_else(|| {
                Error::invalid(format!("{origin}: no optimiser step count for `{name}`"))
            })?;
            // Own copies: the update writes the moments in place, and the loaded tensors may
            // share storage with the caller's map.
            slots.push(Slot {
                m: get(format!("exp_avg.{name}"))?.copy()?,
                v: get(format!("exp_avg_sq.{name}"))?.copy()?,
                step,
            });
        }
        self.slots = slots;
        Ok(())
    }
}
