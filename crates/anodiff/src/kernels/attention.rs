//! Scaled-dot-product attention softmax(s·QKᵀ)V as a candle `CustomOp3` on CPU, processed in
//! blocks of query rows so the score buffer is `rows × S` per task instead of `B·H·T·S`, with an
//! analytic backward that recomputes the probabilities block by block (no stored attention
//! matrix). Parallel over (batch·head, row block) forward, over batch·head backward.

use super::gemm::{matmul_ex, Mat};
use super::simd::{simd_dispatch, FastExp};
use super::{slice, supported, threads};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Query rows per block.
const ROWS: usize = 128;

/// Whether [`attention`] can take these inputs: CPU tensors of one dtype, f32 or f64, rank ≥ 2.
/// (Shapes are checked by [`attention`] itself and are an error, not a reason to fall back.)
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let same = q.dtype() == k.dtype() && q.dtype() == v.dtype();
    supported(q) && same && q.rank() >= 2
}

/// `q: [.., T, d]`, `k: [.., S, d]`, `v: [.., S, dv]` → `[.., T, dv]`. Inputs this kernel does
/// not take (see [`applies`]) are an error: the choice of the plain composition instead is made
/// once, by `nn::ops::sdpa`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if !applies(q, k, v) {
        candle_core::bail!(
            "attention kernel: needs CPU f32/f64 tensors of one dtype and rank >= 2, got q {:?} {:?} rank {}, k {:?}, v {:?}",
            q.device().location(),
            q.dtype(),
            q.rank(),
            k.dtype(),
            v.dtype()
        )
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3(&k, &v, AttnOp { scale })
}

trait Elem: WithDType + FastExp {
    /// Row softmax (see [`softmax_rows_impl`]), the generic loop compiled for the best ISA.
    fn softmax_rows(p: &mut [Self], s: usize, inv: Option<&mut [Self]>) {
        simd_dispatch!(softmax_rows_impl(p, s, inv))
    }
}
impl Elem for f64 {}
impl Elem for f32 {
    /// With AVX2+FMA, explicit 8-lane code: the generic loop's exp is a chain of separate
    /// multiplies and adds (Rust never contracts them), which left the softmax at a fifth of the
    /// forward's time.
    fn softmax_rows(p: &mut [f32], s: usize, inv: Option<&mut [f32]>) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { softmax_rows_f32_avx2(p, s, inv) };
        }
        simd_dispatch!(softmax_rows_impl(p, s, inv))
    }
}

/// [`softmax_rows_impl`] for f32 with AVX2+FMA intrinsics: four running maxima, then two
/// independent exp streams of 8 lanes per iteration so the polynomial chains overlap.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_f32_avx2(p: &mut [f32], s: usize, mut inv_out: Option<&mut [f32]>) {
    use super::simd::{exp8_avx2, exp_f32};
    use std::arch::x86_64::*;
    let hmax = |v: __m256| {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    };
    let hsum = |v: __m256| {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().sum::<f32>()
    };
    for (r, row) in p.chunks_exact_mut(s).enumerate() {
        let ptr = row.as_mut_ptr();
        let (n32, n16, n8) = (s / 32 * 32, s / 16 * 16, s / 8 * 8);
        let mut mv = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let mut i = 0;
        while i < n32 {
            for (j, m) in mv.iter_mut().enumerate() {
                *m = _mm256_max_ps(*m, _mm256_loadu_ps(ptr.add(i + 8 * j)));
            }
            i += 32;
        }
        while i < n8 {
            mv[0] = _mm256_max_ps(mv[0], _mm256_loadu_ps(ptr.add(i)));
            i += 8;
        }
        let m4 = _mm256_max_ps(_mm256_max_ps(mv[0], mv[1]), _mm256_max_ps(mv[2], mv[3]));
        let m = row[n8..].iter().copied().fold(hmax(m4), f32::max);
        let mb = _mm256_set1_ps(m);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n16 {
            let e0 = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), mb));
            let e1 = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i + 8)), mb));
            _mm256_storeu_ps(ptr.add(i), e0);
            _mm256_storeu_ps(ptr.add(i + 8), e1);
            a0 = _mm256_add_ps(a0, e0);
            a1 = _mm256_add_ps(a1, e1);
            i += 16;
        }
        if i < n8 {
            let e0 = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), mb));
            _mm256_storeu_ps(ptr.add(i), e0);
            a0 = _mm256_add_ps(a0, e0);
        }
        let mut sum = hsum(_mm256_add_ps(a0, a1));
        for x in row[n8..].iter_mut() {
            *x = exp_f32(*x - m);
            sum += *x;
        }
        let inv = 1.0 / sum;
        match inv_out.as_deref_mut() {
            Some(out) => out[r] = inv,
            None => row.iter_mut().for_each(|x| *x *= inv),
        }
    }
}

/// Sizes: batch·heads, query length, key length, head dims of q/k and v.
#[derive(Clone, Copy, Debug)]
struct Dims {
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    dv: usize,
}

impl Dims {
    fn new(q: &[usize], k: &[usize], v: &[usize]) -> Result<Self> {
        let r = q.len();
        let ok = r >= 2
            && k.len() == r
            && v.len() == r
            && q[..r - 2] == k[..r - 2]
            && q[..r - 2] == v[..r - 2]
            && q[r - 1] == k[r - 1]
            && k[r - 2] == v[r - 2];
        if !ok || k[r - 2] == 0 {
            candle_core::bail!("attention: incompatible q {q:?}, k {k:?}, v {v:?}")
        }
        Ok(Self {
            bh: q[..r - 2].iter().product(),
            t: q[r - 2],
            s: k[r - 2],
            d: q[r - 1],
            dv: v[r - 1],
        })
    }
}

/// Raw pointer that may cross threads; each task writes a disjoint region.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// In-place row softmax of `p: [rows, s]`, written in 8-lane chunks so it vectorises. With
/// `inv_out`, rows are left unnormalised (`exp(x − max)`) and `1/Σ` goes to `inv_out[row]`: the
/// forward applies it to the `rows × dv` output instead of the `rows × s` probabilities.
#[inline(always)]
fn softmax_rows_impl<T: Elem>(p: &mut [T], s: usize, mut inv_out: Option<&mut [T]>) {
    for (r, row) in p.chunks_exact_mut(s).enumerate() {
        let mut mx = [row[0]; 8];
        let mut it = row.chunks_exact(8);
        for ch in &mut it {
            for (m, &x) in mx.iter_mut().zip(ch) {
                *m = if x > *m { x } else { *m };
            }
        }
        let m = it
            .remainder()
            .iter()
            .chain(mx.iter())
            .copied()
            .fold(row[0], |a, b| if b > a { b } else { a });
        let mut acc = [T::zero(); 8];
        let mut it = row.chunks_exact_mut(8);
        for ch in &mut it {
            for (a, x) in acc.iter_mut().zip(ch.iter_mut()) {
                *x = (*x - m).fexp();
                *a += *x;
            }
        }
        let mut sum = acc.iter().fold(T::zero(), |a, &b| a + b);
        for x in it.into_remainder() {
            *x = (*x - m).fexp();
            sum += *x;
        }
        let inv = T::one() / sum;
        match inv_out.as_deref_mut() {
            Some(out) => out[r] = inv,
            None => {
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
        }
    }
}

/// `p[rows, S] = softmax(scale · q_blk · kᵀ)` (k rows have stride `ldk`); unnormalised with the
/// row factors in `inv` when given (see [`softmax_rows_impl`]).
///
/// # Safety
/// `q`, `k` valid for the given sizes; `p` holds `rows · s`.
#[allow(clippy::too_many_arguments)]
unsafe fn probs<T: Elem>(
    p: &mut [T],
    q: *const T,
    rows: usize,
    k: *const T,
    ldk: usize,
    g: &Dims,
    scale: T,
    inv: Option<&mut [T]>,
) {
    matmul_ex(
        rows,
        g.s,
        g.d,
        p.as_mut_ptr(),
        g.s,
        false,
        Mat::rows(q, g.d),
        Mat::transposed(k, ldk),
        scale,
        false,
    );
    T::softmax_rows(p, g.s, inv);
}

fn fwd<T: Elem>(g: Dims, q: &[T], k: &[T], v: &[T], scale: T) -> Vec<T> {
    let mut out = vec![T::zero(); g.bh * g.t * g.dv];
    let nblk = g.t.div_ceil(ROWS);
    let op = SendPtr(out.as_mut_ptr());
    (0..g.bh * nblk).into_par_iter().for_each_init(
        || (vec![T::zero(); ROWS * g.s], vec![T::zero(); ROWS]),
        |(p, inv), task| {
            let (h, r0) = (task / nblk, (task % nblk) * ROWS);
            let rows = ROWS.min(g.t - r0);
            // SAFETY: head h / rows r0.. are in bounds; each task writes its own output rows.
            unsafe {
                let (qh, kh, vh) = (
                    q.as_ptr().add((h * g.t + r0) * g.d),
                    k.as_ptr().add(h * g.s * g.d),
                    v.as_ptr().add(h * g.s * g.dv),
                );
                probs(
                    &mut p[..rows * g.s],
                    qh,
                    rows,
                    kh,
                    g.d,
                    &g,
                    scale,
                    Some(inv),
                );
                let dst = op.get().add((h * g.t + r0) * g.dv);
                matmul_ex(
                    rows,
                    g.dv,
                    g.s,
                    dst,
                    g.dv,
                    false,
                    Mat::rows(p.as_ptr(), g.s),
                    Mat::rows(vh, g.dv),
                    T::one(),
                    false,
                );
                // The softmax normalisation, applied to the small output block.
                let o = std::slice::from_raw_parts_mut(dst, rows * g.dv);
                for (orow, &f) in o.chunks_exact_mut(g.dv).zip(inv.iter()) {
                    orow.iter_mut().for_each(|v| *v *= f);
                }
            }
        },
    );
    out
}

/// Backward of one head. `kv: [S, d+dv]`, `dod: [T, dv+1]` (dO with rowsum(dO⊙O) appended).
/// Writes dq `[T, d]`, dk `[S, d]`, dv `[S, dv]`.
#[allow(clippy::too_many_arguments)]
fn bwd_head<T: Elem>(
    g: &Dims,
    q: &[T],
    kv: &[T],
    dod: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    scale: T,
    par: bool,
) {
    let (ldkv, ldo) = (g.d + g.dv, g.dv + 1);
    let mut p = vec![T::zero(); ROWS * g.s];
    let mut dp = vec![T::zero(); ROWS * g.s];
    for r0 in (0..g.t).step_by(ROWS) {
        let rows = ROWS.min(g.t - r0);
        let (p, dp) = (&mut p[..rows * g.s], &mut dp[..rows * g.s]);
        let qb = q[r0 * g.d..].as_ptr();
        let dob = &dod[r0 * ldo..];
        let acc = r0 > 0;
        // SAFETY: all views lie inside this head's slices with the strides given.
        unsafe {
            probs(p, qb, rows, kv.as_ptr(), ldkv, g, scale, None);
            // dV += Pᵀ · dO
            matmul_ex(
                g.s,
                g.dv,
                rows,
                dv.as_mut_ptr(),
                g.dv,
                acc,
                Mat::transposed(p.as_ptr(), g.s),
                Mat::rows(dob.as_ptr(), ldo),
                T::one(),
                par,
            );
            // dP = dO · Vᵀ
            matmul_ex(
                rows,
                g.s,
                g.dv,
                dp.as_mut_ptr(),
                g.s,
                false,
                Mat::rows(dob.as_ptr(), ldo),
                Mat::transposed(kv[g.d..].as_ptr(), ldkv),
                T::one(),
                par,
            );
        }
        // dS = P ⊙ (dP − rowsum(dO⊙O)), stored in dp.
        for (i, (pr, dpr)) in p
            .chunks_exact(g.s)
            .zip(dp.chunks_exact_mut(g.s))
            .enumerate()
        {
            let di = dob[i * ldo + g.dv];
            for (a, &b) in dpr.iter_mut().zip(pr) {
                *a = b * (*a - di);
            }
        }
        // SAFETY: as above.
        unsafe {
            // dQ = s · dS · K ; dK += s · dSᵀ · Q
            matmul_ex(
                rows,
                g.d,
                g.s,
                dq[r0 * g.d..].as_mut_ptr(),
                g.d,
                false,
                Mat::rows(dp.as_ptr(), g.s),
                Mat::rows(kv.as_ptr(), ldkv),
                scale,
                par,
            );
            matmul_ex(
                g.s,
                g.d,
                rows,
                dk.as_mut_ptr(),
                g.d,
                acc,
                Mat::transposed(dp.as_ptr(), g.s),
                Mat::rows(qb, g.d),
                scale,
                par,
            );
        }
    }
}

/// Returns `[dq, dk, dv]` packed.
fn bwd<T: Elem>(g: Dims, q: &[T], kv: &[T], dod: &[T], scale: T) -> Vec<T> {
    let (nq, nk, nv) = (g.t * g.d, g.s * g.d, g.s * g.dv);
    let mut out = vec![T::zero(); g.bh * (nq + nk + nv)];
    let (dq, rest) = out.split_at_mut(g.bh * nq);
    let (dk, dv) = rest.split_at_mut(g.bh * nk);
    let head = |h: usize, dq: &mut [T], dk: &mut [T], dv: &mut [T], par: bool| {
        let qh = &q[h * nq..(h + 1) * nq];
        let kvh = &kv[h * g.s * (g.d + g.dv)..(h + 1) * g.s * (g.d + g.dv)];
        let doh = &dod[h * g.t * (g.dv + 1)..(h + 1) * g.t * (g.dv + 1)];
        bwd_head(&g, qh, kvh, doh, dq, dk, dv, scale, par)
    };
    if g.bh >= threads() {
        dq.par_chunks_mut(nq.max(1))
            .zip(dk.par_chunks_mut(nk.max(1)))
            .zip(dv.par_chunks_mut(nv.max(1)))
            .enumerate()
            .for_each(|(h, ((a, b), c))| head(h, a, b, c, false));
    } else {
        // Few heads (e.g. the VAE's single-head attention): parallelise inside the gemms.
        for h in 0..g.bh {
            head(
                h,
                &mut dq[h * nq..(h + 1) * nq],
                &mut dk[h * nk..(h + 1) * nk],
                &mut dv[h * nv..(h + 1) * nv],
                true,
            );
        }
    }
    out
}

struct AttnOp {
    scale: f64,
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "anodiff-attention"
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
        let g = Dims::new(l1.dims(), l2.dims(), l3.dims())?;
        let n = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(fwd(
                g,
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                self.scale as f32,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(fwd(
                g,
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                self.scale,
            )),
            _ => candle_core::bail!("{n}: only f32/f64 with matching dtypes"),
        };
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = g.dv;
        Ok((out, Shape::from(shape)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        go: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let go = go.contiguous()?;
        let di = (&go * o)?.sum_keepdim(D::Minus1)?;
        let dod = Tensor::cat(&[&go, &di], D::Minus1)?;
        let kv = Tensor::cat(&[k, v], D::Minus1)?;
        let packed = q.contiguous()?.apply_op3_no_bwd(
            &kv,
            &dod,
            &AttnBwd {
                scale: self.scale,
                v_dims: v.dims().to_vec(),
            },
        )?;
        let (nq, nk, nv) = (q.elem_count(), k.elem_count(), v.elem_count());
        let dq = packed.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = packed.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = packed.narrow(0, nq + nk, nv)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// (q, [k | v], [dO | rowsum(dO⊙O)]) → packed [dq, dk, dv].
struct AttnBwd {
    scale: f64,
    v_dims: Vec<usize>,
}

impl CustomOp3 for AttnBwd {
    fn name(&self) -> &'static str {
        "anodiff-attention-bwd"
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
        let mut kd = l2.dims().to_vec();
        let dv = *self.v_dims.last().unwrap_or(&0);
        *kd.last_mut().unwrap_or(&mut 0) -= dv.min(kd.last().copied().unwrap_or(0));
        let g = Dims::new(l1.dims(), &kd, &self.v_dims)?;
        if l3.dims().last() != Some(&(g.dv + 1))
            || l3.shape().elem_count() != g.bh * g.t * (g.dv + 1)
        {
            candle_core::bail!("{}: bad grad shape {:?}", self.name(), l3.dims())
        }
        let n = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(bwd(
                g,
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                self.scale as f32,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(bwd(
                g,
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                self.scale,
            )),
            _ => candle_core::bail!("{n}: only f32/f64 with matching dtypes"),
        };
        let len = g.bh * (g.t * g.d + g.s * g.d + g.s * g.dv);
        Ok((out, Shape::from(len)))
    }
}
