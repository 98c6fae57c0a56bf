//! GEGLU `a · gelu(b)` over `h = [a | b]` (the last dimension split in halves; the erf GELU, in
//! f32 with an erf within 4e-7 of libm's) as one candle op with its own backward.
//!
//! Why: composed from candle ops, the two `narrow`s, the GELU and the product keep `gelu(b)` alive
//! until the backward pass, and their backward builds a zero-padded full-width copy of `h` for each
//! half plus the sums. Here the op keeps only `h`, and the backward writes
//! `dh = [g·gelu(b) | g·a·gelu'(b)]` in one pass.

use super::simd::{erf_f32, exp_f32, simd_dispatch};
use super::{slice, supported};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// `h: [.., 2·n]` → `[.., n]`. Falls back to [`reference()`] when the kernels are off, off CPU or
/// for dtypes other than f32/f64.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let last = h.dims().last().copied().unwrap_or(0);
    if !super::enabled() || !supported(h) || last % 2 != 0 {
        return reference(h);
    }
    h.contiguous()?.apply_op1(GegluOp)
}

/// The same computation from candle ops (fallback and test reference).
pub fn reference(h: &Tensor) -> Result<Tensor> {
    let n = h.dim(D::Minus1)? / 2;
    let (a, b) = (h.narrow(D::Minus1, 0, n)?, h.narrow(D::Minus1, n, n)?);
    a * b.gelu_erf()?
}

/// Element type with the normal CDF and density: f32 through the branch-free [`erf_f32`] and
/// [`exp_f32`] (the loops vectorise; libm's `erff` was a scalar call per element and 5 % of a
/// small UNet's training step), f64 through libm.
trait Elem: WithDType {
    /// (Φ(x), φ(x)): the standard normal CDF and density.
    fn phi(self) -> (Self, Self);
}
impl Elem for f32 {
    #[inline(always)]
    fn phi(self) -> (f32, f32) {
        let cdf = 0.5 * (1.0 + erf_f32(self * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = exp_f32(-0.5 * self * self) * 0.398_942_3;
        (cdf, pdf)
    }
}
impl Elem for f64 {
    #[inline(always)]
    fn phi(self) -> (f64, f64) {
        let cdf = 0.5 * (1.0 + libm::erf(self * std::f64::consts::FRAC_1_SQRT_2));
        let pdf = (-0.5 * self * self).exp() * 0.398_942_280_401_432_7;
        (cdf, pdf)
    }
}

fn fwd<T: Elem>(h: &[T], n: usize) -> Vec<T> {
    let mut y = vec![T::zero(); h.len() / 2];
    y.par_chunks_mut(n.max(1))
        .zip(h.par_chunks(2 * n.max(1)))
        .for_each(|(yr, hr)| {
            let (a, b) = hr.split_at(n);
            simd_dispatch!(for ((o, &a), &b) in yr.iter_mut().zip(a).zip(b) {
                *o = a * b * b.phi().0;
            })
        });
    y
}

/// `dh = [g·gelu(b) | g·a·(Φ(b) + b·φ(b))]`.
fn bwd<T: Elem>(h: &[T], g: &[T], n: usize) -> Vec<T> {
    let mut dh = vec![T::zero(); h.len()];
    dh.par_chunks_mut(2 * n.max(1))
        .zip(h.par_chunks(2 * n.max(1)))
        .zip(g.par_chunks(n.max(1)))
        .for_each(|((dr, hr), gr)| {
            let (a, b) = hr.split_at(n);
            let (da, db) = dr.split_at_mut(n);
            simd_dispatch!(for i in 0..n {
                let (cdf, pdf) = b[i].phi();
                da[i] = gr[i] * b[i] * cdf;
                db[i] = gr[i] * a[i] * (cdf + b[i] * pdf);
            })
        });
    dh
}

struct GegluOp;

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "anodiff-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.dims().to_vec();
        let n = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(fwd(slice::<f32>(s, l, self.name())?, n)),
            CpuStorage::F64(_) => CpuStorage::F64(fwd(slice::<f64>(s, l, self.name())?, n)),
            _ => candle_core::bail!("{}: only f32/f64", self.name()),
        };
        Ok((y, Shape::from(dims)))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(&g.contiguous()?, &GegluBwd)?))
    }
}

/// (h, dY) → dh.
struct GegluBwd;

impl CustomOp2 for GegluBwd {
    fn name(&self) -> &'static str {
        "anodiff-geglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims().last().copied().unwrap_or(0) / 2;
        if l2.shape().elem_count() * 2 != l1.shape().elem_count() {
            candle_core::bail!(
                "{}: grad {:?} does not match input {:?}",
                self.name(),
                l2.dims(),
                l1.dims()
            )
        }
        let dh = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(bwd(
                slice::<f32>(s1, l1, self.name())?,
                slice::<f32>(s2, l2, self.name())?,
                n,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(bwd(
                slice::<f64>(s1, l1, self.name())?,
                slice::<f64>(s2, l2, self.name())?,
                n,
            )),
            _ => candle_core::bail!("{}: only f32/f64 with matching dtypes", self.name()),
        };
        Ok((dh, l1.shape().clone()))
    }
}
