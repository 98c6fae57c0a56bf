//! A frozen linear layer plus one low-rank (LoRA) term as ONE graph node:
//! `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` with `A: [r, in]`, `B: [out, r]`.
//!
//! Composed from candle ops, a LoRA projection keeps the base output, the low-rank product and
//! its scaled copy (three `rows × out` activations) alive until the backward pass, and the sums
//! cost extra passes. This op keeps only its inputs (x, A, B; W and b are frozen and shared),
//! writes the output with three GEMMs (bias preloaded, the low-rank term accumulated in place)
//! and returns only the gradients that are tracked: dx = g·W + s·(g·B)·A, dA = s·(g·B)ᵀ·x,
//! dB = s·gᵀ·(x·Aᵀ).

use super::gemm::{matmul, matmul_ex, Mat};
use super::{slice, supported};
use candle_core::{
    CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use rayon::prelude::*;

/// `x: [.., in]` through the frozen `weight: [out, in]` (+ `bias: [out]`) plus `scale·up(down(x))`.
/// Returns `None` when the op does not apply (kernels disabled, not CPU, dtypes other than
/// matching f32/f64, a trainable base weight or mismatched shapes): the caller then composes it.
pub fn linear_lowrank(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    down: &Tensor,
    up: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    let all = [Some(x), Some(weight), bias, Some(down), Some(up)];
    let same = all
        .iter()
        .flatten()
        .all(|t| supported(t) && t.dtype() == x.dtype());
    let frozen = !weight.track_op() && !bias.is_some_and(|b| b.track_op());
    if !super::enabled() || !same || !frozen || x.rank() == 0 || x.elem_count() == 0 {
        return Ok(None);
    }
    let (out, inp) = weight.dims2()?;
    let (r, din) = down.dims2()?;
    let fits = x.dim(candle_core::D::Minus1)? == inp
        && din == inp
        && up.dims() == [out, r]
        && bias.is_none_or(|b| b.dims() == [out]);
    if !fits {
        return Ok(None);
    }
    let op = LowRankOp {
        weight: weight.contiguous()?,
        bias: bias.map(|b| b.contiguous()).transpose()?,
        scale,
    };
    let (x, down, up) = (x.contiguous()?, down.contiguous()?, up.contiguous()?);
    x.apply_op3(&down, &up, op).map(Some)
}

/// The frozen layer alone, `x·Wᵀ + b`, as the same op with a rank-0 low-rank pair: the bias is
/// preloaded into the GEMM's output, the graph keeps no copy of the output, and the backward forms
/// only `dx = g·W`. `None` where [`linear_lowrank`] would not apply.
pub fn linear_frozen(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let (out, inp) = weight.dims2()?;
    let down = Tensor::zeros((0, inp), weight.dtype(), weight.device())?;
    let up = Tensor::zeros((out, 0), weight.dtype(), weight.device())?;
    linear_lowrank(x, weight, bias, &down, &up, 0.0)
}

struct LowRankOp {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: f64,
}

/// Sizes: rows of x, in, out, rank.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    inp: usize,
    out: usize,
    r: usize,
}

/// The CPU slice of a (contiguous) tensor, read under its storage guard.
fn cpu_slice<'a, T: WithDType>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match s {
        Storage::Cpu(c) => slice::<T>(c, l, op),
        _ => candle_core::bail!("{op}: CPU tensors only"),
    }
}

/// Forward: `y = b + x·Wᵀ + (s·x·Aᵀ)·Bᵀ`.
fn fwd<T: WithDType>(
    d: Dims,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    a: &[T],
    bm: &[T],
    s: T,
) -> Vec<T> {
    let mut y = vec![T::zero(); d.rows * d.out];
    if let Some(b) = b {
        y.par_chunks_mut(d.out)
            .for_each(|row| row.copy_from_slice(b));
    }
    let mut t = vec![T::zero(); d.rows * d.r];
    // SAFETY: every view matches the sizes of its slice; outputs are fresh buffers.
    unsafe {
        let xm = Mat::rows(x.as_ptr(), d.inp);
        matmul(
            d.rows,
            d.out,
            d.inp,
            y.as_mut_ptr(),
            d.out,
            b.is_some(),
            xm,
            Mat::transposed(w.as_ptr(), d.inp),
        );
        if d.r > 0 {
            matmul_ex(
                d.rows,
                d.r,
                d.inp,
                t.as_mut_ptr(),
                d.r,
                false,
                xm,
                Mat::transposed(a.as_ptr(), d.inp),
                s,
                true,
            );
            matmul(
                d.rows,
                d.out,
                d.r,
                y.as_mut_ptr(),
                d.out,
                true,
                Mat::rows(t.as_ptr(), d.r),
                Mat::transposed(bm.as_ptr(), d.r),
            );
        }
    }
    y
}

/// The operands of the backward, as slices.
struct BwdIn<'a, T> {
    g: &'a [T],
    x: &'a [T],
    w: &'a [T],
    a: &'a [T],
    b: &'a [T],
}

/// `(dx, dA, dB)`, each only when `want` says so.
fn bwd<T: WithDType>(d: Dims, v: BwdIn<T>, s: T, want: [bool; 3]) -> [Option<Vec<T>>; 3] {
    let gm = Mat::rows(v.g.as_ptr(), d.out);
    let xm = Mat::rows(v.x.as_ptr(), d.inp);
    // gu = s·g·B: [rows, r], shared by dx and dA.
    let mut gu = vec![T::zero(); d.rows * d.r];
    let mut res: [Option<Vec<T>>; 3] = [None, None, None];
    // SAFETY: every view matches the sizes of its slice; outputs are fresh buffers.
    unsafe {
        let low_rank = d.r > 0;
        if low_rank && (want[0] || want[1]) {
            matmul_ex(
                d.rows,
                d.r,
                d.out,
                gu.as_mut_ptr(),
                d.r,
                false,
                gm,
                Mat::rows(v.b.as_ptr(), d.r),
                s,
                true,
            );
        }
        if want[0] {
            let mut dx = vec![T::zero(); d.rows * d.inp];
            matmul(
                d.rows,
                d.inp,
                d.out,
                dx.as_mut_ptr(),
                d.inp,
                false,
                gm,
                Mat::rows(v.w.as_ptr(), d.inp),
            );
            if low_rank {
                matmul(
                    d.rows,
                    d.inp,
                    d.r,
                    dx.as_mut_ptr(),
                    d.inp,
                    true,
                    Mat::rows(gu.as_ptr(), d.r),
                    Mat::rows(v.a.as_ptr(), d.inp),
                );
            }
            res[0] = Some(dx);
        }
        if want[1] {
            let mut da = vec![T::zero(); d.r * d.inp];
            matmul(
                d.r,
                d.inp,
                d.rows,
                da.as_mut_ptr(),
                d.inp,
                false,
                Mat::transposed(gu.as_ptr(), d.r),
                xm,
            );
            res[1] = Some(da);
        }
        if want[2] {
            let mut xa = vec![T::zero(); d.rows * d.r];
            matmul(
                d.rows,
                d.r,
                d.inp,
                xa.as_mut_ptr(),
                d.r,
                false,
                xm,
                Mat::transposed(v.a.as_ptr(), d.inp),
            );
            let mut db = vec![T::zero(); d.out * d.r];
            matmul_ex(
                d.out,
                d.r,
                d.rows,
                db.as_mut_ptr(),
                d.r,
                false,
                Mat::transposed(v.g.as_ptr(), d.out),
                Mat::rows(xa.as_ptr(), d.r),
                s,
                true,
            );
            res[2] = Some(db);
        }
    }
    res
}

impl LowRankOp {
    fn dims(&self, x: &[usize], down: &[usize]) -> Dims {
        let (out, inp) = (self.weight.dims()[0], self.weight.dims()[1]);
        Dims {
            rows: x[..x.len() - 1].iter().product(),
            inp,
            out,
            r: down[0],
        }
    }

    fn forward<T: WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<Vec<T>> {
        let name = self.name();
        let d = self.dims(l1.dims(), l2.dims());
        let (ws, wl) = self.weight.storage_and_layout();
        let bias = self.bias.as_ref().map(|b| b.storage_and_layout());
        let b = match &bias {
            Some((bs, bl)) => Some(cpu_slice::<T>(bs, bl, name)?),
            None => None,
        };
        Ok(fwd(
            d,
            slice::<T>(s1, l1, name)?,
            cpu_slice::<T>(&ws, wl, name)?,
            b,
            slice::<T>(s2, l2, name)?,
            slice::<T>(s3, l3, name)?,
            T::from_f64(self.scale),
        ))
    }

    fn grads<T: WithDType>(
        &self,
        x: &Tensor,
        down: &Tensor,
        up: &Tensor,
        g: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let name = self.name();
        let d = self.dims(x.dims(), down.dims());
        let g = g.contiguous()?;
        let guards = [
            g.storage_and_layout(),
            x.storage_and_layout(),
            self.weight.storage_and_layout(),
            down.storage_and_layout(),
            up.storage_and_layout(),
        ];
        let sl = |i: usize| cpu_slice::<T>(&guards[i].0, guards[i].1, name);
        let v = BwdIn {
            g: sl(0)?,
            x: sl(1)?,
            w: sl(2)?,
            a: sl(3)?,
            b: sl(4)?,
        };
        let want = [x.track_op(), down.track_op(), up.track_op()];
        let res = bwd(d, v, T::from_f64(self.scale), want);
        drop(guards);
        let shapes: [Shape; 3] = [x.shape().clone(), down.shape().clone(), up.shape().clone()];
        let mut out: [Option<Tensor>; 3] = [None, None, None];
        for ((o, r), sh) in out.iter_mut().zip(res).zip(shapes) {
            if let Some(v) = r {
                *o = Some(Tensor::from_vec(v, sh, &Device::Cpu)?);
            }
        }
        Ok(out)
    }
}

impl CustomOp3 for LowRankOp {
    fn name(&self) -> &'static str {
        "anodiff-linear-lowrank"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = self.weight.dims()[0];
        let y = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(s1, l1, s2, l2, s3, l3)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(s1, l1, s2, l2, s3, l3)?),
            _ => candle_core::bail!("{}: only f32/f64", self.name()),
        };
        Ok((y, Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        down: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, da, db] = match x.dtype() {
            DType::F32 => self.grads::<f32>(x, down, up, g)?,
            DType::F64 => self.grads::<f64>(x, down, up, g)?,
            dt => candle_core::bail!("{}: only f32/f64, got {dt:?}", self.name()),
        };
        Ok((dx, da, db))
    }
}
