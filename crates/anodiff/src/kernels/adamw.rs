//! The AdamW update in place: three passes over the parameter, its gradient and the two moment
//! tensors, no temporaries.
//!
//! Why: written as candle tensor expressions the update is a dozen element-wise ops per
//! parameter, each allocating and writing a whole new tensor; for the small networks (millions of
//! parameters, a step of ~100 ms) that traffic is a visible share of the step. The arithmetic here
//! is the composition's, operation for operation, with candle's rounding of scalars to f32 (its
//! `affine(mul, add)` computes `x·mul + add`, so `+ 0.0` terms are kept): the result is
//! bit-identical to the composed form (`tests/kernels.rs`,
//! `adamw_in_place_is_bit_identical_to_the_composition`).

use super::slice;
use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// The scalars of one update, in f64 as the optimiser computes them (rounded to f32 here, as
/// candle rounds the scalars of `affine`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    /// `1 − lr·wd`, or `None` without weight decay (then the parameter is not rescaled at all).
    pub decay: Option<f64>,
    /// `1 − β1`.
    pub one_minus_beta1: f64,
    /// `β2`.
    pub beta2: f64,
    /// `1 − β2`.
    pub one_minus_beta2: f64,
    /// `1 / √(1 − β2ᵗ)`.
    pub inv_sqrt_bc2: f64,
    /// `ε`.
    pub eps: f64,
    /// `−lr / (1 − β1ᵗ)`.
    pub step: f64,
}

/// Elements per rayon task: big enough that the split costs nothing, small enough that the
/// small networks' larger tensors use both cores.
const CHUNK: usize = 1 << 15;

/// Whether [`update`] can run on these tensors (CPU, f32, contiguous), so callers can keep the
/// composed form for the rest.
pub fn supported(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    [p, g, m, v]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
        && [g, m, v].iter().all(|t| t.shape() == p.shape())
}

/// `m ← m + (g − m)(1 − β1)`, `v ← β2·v + (1 − β2)·g²`, then
/// `p ← p·decay + (m / (√v · inv_sqrt_bc2 + ε)) · step`, all in place.
/// Requires [`supported`]; `p`, `m` and `v` must not share storage with each other or with `g`.
pub fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: AdamWScalars) -> Result<()> {
    if !supported(p, g, m, v) {
        bail!("adamw update: tensors must be contiguous f32 CPU tensors of one shape");
    }
    m.inplace_op2(g, &Moment::First(s))?;
    v.inplace_op2(g, &Moment::Second(s))?;
    p.inplace_op3(m, v, &Apply(s))
}

/// The writable slice of an in-place op's destination.
fn dst_slice<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let (a, b) = match l.contiguous_offsets() {
        Some(r) => r,
        None => bail!("{op}: destination must be contiguous"),
    };
    match s {
        CpuStorage::F32(d) => Ok(&mut d[a..b]),
        _ => bail!("{op}: destination must be f32"),
    }
}

/// The source storage of an in-place op (sources never alias the destination here).
fn src_slice<'a>(src: (&'a CpuStorage, &Layout), n: usize, op: &str) -> Result<&'a [f32]> {
    let s = slice::<f32>(src.0, src.1, op)?;
    if s.len() != n {
        bail!(
            "{op}: {} source elements for {n} destination elements",
            s.len()
        );
    }
    Ok(s)
}

/// Which moment an in-place pass updates from the gradient.
#[derive(Clone, Copy)]
enum Moment {
    /// `m ← m + (g − m)(1 − β1)`.
    First(AdamWScalars),
    /// `v ← β2·v + (1 − β2)·g²`.
    Second(AdamWScalars),
}

impl Moment {
    /// `x ← f(x, g)` over the destination, in rayon chunks (one generic loop per moment, so each
    /// vectorises without a branch per element).
    fn run(
        &self,
        dst: &mut CpuStorage,
        l: &Layout,
        src: (&CpuStorage, &Layout),
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> Result<()> {
        let x = dst_slice(dst, l, self.name())?;
        let g = src_slice(src, x.len(), self.name())?;
        x.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(x, g)| {
                for (x, &g) in x.iter_mut().zip(g) {
                    *x = f(*x, g);
                }
            });
        Ok(())
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        match self {
            Moment::First(_) => "adamw-m",
            Moment::Second(_) => "adamw-v",
        }
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        l: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        match *self {
            Moment::First(s) => {
                let c1 = s.one_minus_beta1 as f32;
                self.run(dst, l, (s2, l2), |m, g| m + ((g - m) * c1 + 0.0))
            }
            Moment::Second(s) => {
                let (b2, c2) = (s.beta2 as f32, s.one_minus_beta2 as f32);
                self.run(dst, l, (s2, l2), |v, g| {
                    (v * b2 + 0.0) + ((g * g) * c2 + 0.0)
                })
            }
        }
    }
}

struct Apply(AdamWScalars);

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "adamw-p"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        l: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let p = dst_slice(dst, l, self.name())?;
        let m = src_slice((s2, l2), p.len(), self.name())?;
        let v = src_slice((s3, l3), p.len(), self.name())?;
        let s = self.0;
        let (inv, eps, step) = (s.inv_sqrt_bc2 as f32, s.eps as f32, s.step as f32);
        let decay = s.decay.map(|d| d as f32);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    let base = match decay {
                        Some(d) => *p * d + 0.0,
                        None => *p,
                    };
                    let den = (v.sqrt() * inv + 0.0) * 1.0 + eps;
                    *p = base + ((m / den) * step + 0.0);
                }
            });
        Ok(())
    }
}
