//! NCHW 2-D convolution (groups 1, dilation 1) as a candle `CustomOp2` on CPU: im2col tiles of
//! whole output rows + one `gemm` per tile, and an analytic backward (input grad = Wᵀ·dY then
//! col2im; weight grad = dY·colᵀ accumulated over tiles) built from the same pieces.

use super::gemm::{matmul, Mat};
use super::winograd;
use super::{slice, supported};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Upper bound on im2col buffer elements per tile (8 MiB of f32): bounds memory on big images and
/// keeps the tile cache-friendly (measured no slower than whole-image im2col).
const COL_BUDGET: usize = 2 << 20;

/// `x: [N, C, H, W]`, `w: [O, C, kh, kw]` → `[N, O, Ho, Wo]` (no bias). Falls back to candle on
/// non-CPU devices or dtypes other than f32/f64.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_bias(x, w, None, stride, padding)
}

/// [`conv2d`] plus a per-output-channel `bias: [O]`, added inside the op. Fusing it (rather than a
/// `broadcast_add` after the op) saves a pass over the output and, when training, the retained
/// pre-bias activation of every convolution.
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_with(x, w, bias, stride, padding, COL_BUDGET, winograd::mode())
}

/// [`conv2d`] on the im2col path with an explicit budget (elements per tile); small budgets force
/// many tiles (used by tests to exercise tiling on small images).
pub fn conv2d_tiled(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    budget: usize,
) -> Result<Tensor> {
    conv2d_with(x, w, None, stride, padding, budget, None)
}

/// [`conv2d_bias`] with the algorithm chosen by the caller: `winograd` is the largest Winograd
/// variant allowed for f32 stride-1 3×3 convolutions (forward, input and weight gradient; a layer
/// with too few tiles steps down, see `Geo::winograd`); `None` means im2col tiles of `budget`
/// elements everywhere.
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    budget: usize,
    winograd: Option<winograd::Tile>,
) -> Result<Tensor> {
    let candle_bias = |y: Tensor| match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    };
    let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
    if !supported(x) || !same(w) || !bias.is_none_or(same) || x.rank() != 4 || w.rank() != 4 {
        return candle_bias(x.conv2d(w, padding, stride, 1, 1)?);
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let op = Conv2dOp {
        stride,
        padding,
        budget,
        winograd,
    };
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) => {
            if b.dims() != [w.dim(0)?] {
                candle_core::bail!(
                    "conv2d: bias {:?} does not match {} output channels",
                    b.dims(),
                    w.dim(0)?
                )
            }
            x.apply_op3(&w, &b.contiguous()?, Conv2dBiasOp(op))
        }
    }
}

/// Shapes of one convolution, shared by forward and both backward ops.
#[derive(Clone, Copy, Debug)]
struct Geo {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    s: usize,
    p: usize,
    budget: usize,
}

impl Geo {
    fn new(x: &[usize], w: &[usize], s: usize, p: usize, budget: usize) -> Result<Self> {
        let (&[n, c, h, wd], &[o, c2, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d: expected 4-D input and weight, got {x:?} and {w:?}")
        };
        if c != c2 || s == 0 || kh == 0 || kw == 0 || h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!(
                "conv2d: incompatible input {x:?} / weight {w:?} (stride {s}, pad {p})"
            )
        }
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (wd + 2 * p - kw) / s + 1;
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            ho,
            wo,
            s,
            p,
            budget,
        })
    }
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn pout(&self) -> usize {
        self.ho * self.wo
    }
    /// 1×1, stride 1, no padding: the input image already is the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }
    /// The Winograd variant to use given the preferred one: stride-1 3×3 with padding ≤ 2 (the
    /// input gradient then has padding 2 − p), and enough tiles for wide GEMMs. Below
    /// `MIN_TILES` the transformed weights ((m+2)²/9 × the weights) dominate the traffic and
    /// im2col's single GEMM is faster (SD-1.5's 8×8 and 4×4 levels), so F(4,3) falls back to
    /// F(2,3), and F(2,3) to im2col.
    fn winograd(&self, want: Option<winograd::Tile>) -> Option<winograd::Tile> {
        const MIN_TILES: usize = 64;
        if !(self.kh == 3 && self.kw == 3 && self.s == 1 && self.p <= 2) {
            return None;
        }
        let tiles = |m: usize| self.n * self.ho.div_ceil(m) * self.wo.div_ceil(m);
        match want? {
            winograd::Tile::F4 if tiles(4) >= MIN_TILES => Some(winograd::Tile::F4),
            _ if tiles(2) >= MIN_TILES => Some(winograd::Tile::F2),
            _ => None,
        }
    }
    /// The same convolution as a Winograd plan (forward and weight gradient).
    fn plan(&self) -> winograd::Plan {
        winograd::Plan {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            pad: self.p,
        }
    }
    /// Output rows per im2col tile.
    fn tile_rows(&self) -> usize {
        (self.budget / (self.k() * self.wo).max(1)).clamp(1, self.ho)
    }
    /// Valid output columns `[lo, hi)` for kernel column `j`: those reading inside the image.
    fn ox_range(&self, j: usize) -> (usize, usize) {
        // ix = ox*s + j - p must lie in [0, w).
        let lo = if j >= self.p {
            0
        } else {
            (self.p - j).div_ceil(self.s)
        }
        .min(self.wo);
        let hi = if self.w + self.p > j {
            ((self.w + self.p - j - 1) / self.s + 1).min(self.wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Fill `col[K, rows·Wo]` for output rows `[r0, r1)` of one image `x: [C, H, W]`.
fn im2col<T: WithDType>(g: &Geo, x: &[T], col: &mut [T], r0: usize, r1: usize) {
    let tp = (r1 - r0) * g.wo;
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    col[..g.k() * tp]
        .par_chunks_mut(kk * tp)
        .enumerate()
        .for_each(|(c, cc)| {
            let xc = &x[c * hw..(c + 1) * hw];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let dst = &mut cc[(i * g.kw + j) * tp..(i * g.kw + j + 1) * tp];
                    let (lo, hi) = g.ox_range(j);
                    for r in r0..r1 {
                        let d = &mut dst[(r - r0) * g.wo..(r - r0 + 1) * g.wo];
                        let iy = (r * g.s + i) as isize - g.p as isize;
                        if iy < 0 || iy >= g.h as isize {
                            d.fill(T::zero());
                            continue;
                        }
                        let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                        d[..lo].fill(T::zero());
                        d[hi..].fill(T::zero());
                        if lo == hi {
                            continue;
                        }
                        let ix0 = lo * g.s + j - g.p;
                        if g.s == 1 {
                            d[lo..hi].copy_from_slice(&xr[ix0..ix0 + hi - lo]);
                        } else {
                            for (k, v) in d[lo..hi].iter_mut().enumerate() {
                                *v = xr[ix0 + k * g.s];
                            }
                        }
                    }
                }
            }
        });
}

/// Scatter-add `col[K, rows·Wo]` (output rows `[r0, r1)`) back into one image `dx: [C, H, W]`.
fn col2im<T: WithDType>(g: &Geo, col: &[T], dx: &mut [T], r0: usize, r1: usize) {
    let tp = (r1 - r0) * g.wo;
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    dx.par_chunks_mut(hw).enumerate().for_each(|(c, xc)| {
        let cc = &col[c * kk * tp..(c + 1) * kk * tp];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let src = &cc[(i * g.kw + j) * tp..(i * g.kw + j + 1) * tp];
                let (lo, hi) = g.ox_range(j);
                for r in r0..r1 {
                    let iy = (r * g.s + i) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize || lo >= hi {
                        continue;
                    }
                    let s = &src[(r - r0) * g.wo + lo..(r - r0) * g.wo + hi];
                    let xr = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let ix0 = lo * g.s + j - g.p;
                    if g.s == 1 {
                        for (a, &b) in xr[ix0..ix0 + hi - lo].iter_mut().zip(s) {
                            *a += b;
                        }
                    } else {
                        for (k, &b) in s.iter().enumerate() {
                            xr[ix0 + k * g.s] += b;
                        }
                    }
                }
            }
        }
    });
}

fn fwd<T: WithDType>(g: &Geo, x: &[T], w: &[T]) -> Vec<T> {
    let (k, pout) = (g.k(), g.pout());
    let mut out = vec![T::zero(); g.n * g.o * pout];
    let rows = g.tile_rows();
    let mut col = if g.pointwise() {
        Vec::new()
    } else {
        vec![T::zero(); k * rows * g.wo]
    };
    for b in 0..g.n {
        let xb = &x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w];
        let ob = out[b * g.o * pout..].as_mut_ptr();
        if g.pointwise() {
            // SAFETY: sizes match the slices above.
            unsafe {
                matmul(
                    g.o,
                    pout,
                    k,
                    ob,
                    pout,
                    false,
                    Mat::rows(w.as_ptr(), k),
                    Mat::rows(xb.as_ptr(), pout),
                )
            };
            continue;
        }
        for r0 in (0..g.ho).step_by(rows) {
            let r1 = (r0 + rows).min(g.ho);
            let tp = (r1 - r0) * g.wo;
            im2col(g, xb, &mut col, r0, r1);
            // SAFETY: dst block [o, tp] at column r0·Wo of the [o, pout] image lies inside `out`.
            unsafe {
                matmul(
                    g.o,
                    tp,
                    k,
                    ob.add(r0 * g.wo),
                    pout,
                    false,
                    Mat::rows(w.as_ptr(), k),
                    Mat::rows(col.as_ptr(), tp),
                )
            };
        }
    }
    out
}

/// Input gradient: per tile `dcol = Wᵀ · dY`, then col2im.
fn bwd_data<T: WithDType>(g: &Geo, gy: &[T], w: &[T]) -> Vec<T> {
    let (k, pout, chw) = (g.k(), g.pout(), g.c * g.h * g.w);
    let mut dx = vec![T::zero(); g.n * chw];
    let rows = g.tile_rows();
    let mut col = if g.pointwise() {
        Vec::new()
    } else {
        vec![T::zero(); k * rows * g.wo]
    };
    for b in 0..g.n {
        let gyb = &gy[b * g.o * pout..(b + 1) * g.o * pout];
        let dxb = &mut dx[b * chw..(b + 1) * chw];
        if g.pointwise() {
            // SAFETY: dxb is [c, pout], w is [o, c], gyb is [o, pout].
            unsafe {
                matmul(
                    k,
                    pout,
                    g.o,
                    dxb.as_mut_ptr(),
                    pout,
                    false,
                    Mat::transposed(w.as_ptr(), k),
                    Mat::rows(gyb.as_ptr(), pout),
                )
            };
            continue;
        }
        for r0 in (0..g.ho).step_by(rows) {
            let r1 = (r0 + rows).min(g.ho);
            let tp = (r1 - r0) * g.wo;
            // SAFETY: col holds [k, tp]; gy tile is the [o, tp] block at column r0·Wo.
            unsafe {
                matmul(
                    k,
                    tp,
                    g.o,
                    col.as_mut_ptr(),
                    tp,
                    false,
                    Mat::transposed(w.as_ptr(), k),
                    Mat::rows(gyb[r0 * g.wo..].as_ptr(), pout),
                )
            };
            col2im(g, &col, dxb, r0, r1);
        }
    }
    dx
}

/// Weight gradient: `dW = Σ_tiles dY_tile · col_tileᵀ`.
fn bwd_weight<T: WithDType>(g: &Geo, x: &[T], gy: &[T]) -> Vec<T> {
    let (k, pout, chw) = (g.k(), g.pout(), g.c * g.h * g.w);
    let mut dw = vec![T::zero(); g.o * k];
    let rows = g.tile_rows();
    let mut col = if g.pointwise() {
        Vec::new()
    } else {
        vec![T::zero(); k * rows * g.wo]
    };
    let mut acc = false;
    for b in 0..g.n {
        let xb = &x[b * chw..(b + 1) * chw];
        let gyb = &gy[b * g.o * pout..(b + 1) * g.o * pout];
        if g.pointwise() {
            // SAFETY: dw is [o, c]; gyb [o, pout]; xb [c, pout] read transposed.
            unsafe {
                matmul(
                    g.o,
                    k,
                    pout,
                    dw.as_mut_ptr(),
                    k,
                    acc,
                    Mat::rows(gyb.as_ptr(), pout),
                    Mat::transposed(xb.as_ptr(), pout),
                )
            };
            acc = true;
            continue;
        }
        for r0 in (0..g.ho).step_by(rows) {
            let r1 = (r0 + rows).min(g.ho);
            let tp = (r1 - r0) * g.wo;
            im2col(g, xb, &mut col, r0, r1);
            // SAFETY: gy tile [o, tp] (row stride pout), col [k, tp] read transposed.
            unsafe {
                matmul(
                    g.o,
                    k,
                    tp,
                    dw.as_mut_ptr(),
                    k,
                    acc,
                    Mat::rows(gyb[r0 * g.wo..].as_ptr(), pout),
                    Mat::transposed(col.as_ptr(), tp),
                )
            };
            acc = true;
        }
    }
    dw
}

/// Runs `f` on f32 or f64 storage; other dtypes never reach here (see `supported`).
macro_rules! dispatch {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $name:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a = slice::<f32>($s1, $l1, $name)?;
                let $b = slice::<f32>($s2, $l2, $name)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a = slice::<f64>($s1, $l1, $name)?;
                let $b = slice::<f64>($s2, $l2, $name)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32/f64 with matching dtypes", $name),
        }
    };
}

struct Conv2dOp {
    stride: usize,
    padding: usize,
    budget: usize,
    /// Winograd variant where it applies (f32, stride-1 3×3); `None` = always im2col.
    winograd: Option<winograd::Tile>,
}

impl Conv2dOp {
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "anodiff-conv2d";
        let g = Geo::new(l1.dims(), l2.dims(), self.stride, self.padding, self.budget)?;
        let shape = Shape::from((g.n, g.o, g.ho, g.wo));
        if let (Some(tile), CpuStorage::F32(_), CpuStorage::F32(_)) =
            (g.winograd(self.winograd), s1, s2)
        {
            let (x, w) = (slice::<f32>(s1, l1, name)?, slice::<f32>(s2, l2, name)?);
            let plan = g.plan();
            let u = winograd::transform_weights(w, g.o, g.c, false, tile);
            let out = winograd::conv(&plan, x, &u, tile);
            return Ok((CpuStorage::F32(out), shape));
        }
        let out = dispatch!(s1, l1, s2, l2, name, |x, w| fwd(&g, x, w));
        Ok((out, shape))
    }

    /// (dX, dW), each only when its operand is tracked (e.g. no input grad for the first conv on
    /// data, no weight grad for a frozen UNet).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let dims = (x.dims().to_vec(), w.dims().to_vec());
        let op = BwdOp {
            stride: self.stride,
            padding: self.padding,
            budget: self.budget,
            winograd: self.winograd,
            x_dims: dims.0,
            w_dims: dims.1,
        };
        let dx = match x.track_op() {
            true => Some(gy.apply_op2_no_bwd(&w, &BwdData(&op))?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(x.apply_op2_no_bwd(&gy, &BwdWeight(&op))?),
            false => None,
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "anodiff-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, gy)
    }
}

/// The convolution with its bias added in place on the output.
struct Conv2dBiasOp(Conv2dOp);

impl CustomOp3 for Conv2dBiasOp {
    fn name(&self) -> &'static str {
        "anodiff-conv2d-bias"
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
        let (mut out, shape) = self.0.forward(s1, l1, s2, l2)?;
        let pout = shape.dims()[2] * shape.dims()[3];
        match &mut out {
            CpuStorage::F32(y) => add_bias(y, slice::<f32>(s3, l3, self.name())?, pout),
            CpuStorage::F64(y) => add_bias(y, slice::<f64>(s3, l3, self.name())?, pout),
            _ => candle_core::bail!("{}: only f32/f64", self.name()),
        }
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.0.grads(x, w, gy)?;
        let db = match b.track_op() {
            true => Some(bias_grad(gy)?),
            false => None,
        };
        Ok((dx, dw, db))
    }
}

/// `y[n, o, ·] += b[o]` on a contiguous `[N, O, P]` output.
fn add_bias<T: WithDType>(y: &mut [T], b: &[T], pout: usize) {
    y.par_chunks_mut(pout.max(1))
        .enumerate()
        .for_each(|(i, plane)| {
            let bo = b[i % b.len()];
            plane.iter_mut().for_each(|v| *v += bo);
        });
}

/// `db[o] = Σ_{n,p} dY[n, o, p]` for `dY: [N, O, Ho, Wo]`.
fn bias_grad(gy: &Tensor) -> Result<Tensor> {
    gy.contiguous()?.apply_op1_no_bwd(&BiasGrad)
}

struct BiasGrad;

impl candle_core::CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "anodiff-conv2d-bias-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, o, h, w] = l.dims() else {
            candle_core::bail!(
                "{}: expected a 4-D gradient, got {:?}",
                self.name(),
                l.dims()
            )
        };
        fn sums<T: WithDType>(gy: &[T], n: usize, o: usize, pout: usize) -> Vec<T> {
            (0..o)
                .into_par_iter()
                .map(|c| {
                    // 8 partial sums so the inner loop vectorises.
                    let mut acc = [T::zero(); 8];
                    let mut tail = T::zero();
                    for b in 0..n {
                        let plane = &gy[(b * o + c) * pout..(b * o + c + 1) * pout];
                        let mut it = plane.chunks_exact(8);
                        for ch in &mut it {
                            for (a, &v) in acc.iter_mut().zip(ch) {
                                *a += v;
                            }
                        }
                        tail = it.remainder().iter().fold(tail, |a, &v| a + v);
                    }
                    acc.iter().fold(tail, |a, &v| a + v)
                })
                .collect()
        }
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(sums(slice::<f32>(s, l, self.name())?, n, o, h * w))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(sums(slice::<f64>(s, l, self.name())?, n, o, h * w))
            }
            _ => candle_core::bail!("{}: only f32/f64", self.name()),
        };
        Ok((out, Shape::from(o)))
    }
}

struct BwdOp {
    stride: usize,
    padding: usize,
    budget: usize,
    winograd: Option<winograd::Tile>,
    x_dims: Vec<usize>,
    w_dims: Vec<usize>,
}

impl BwdOp {
    fn geo(&self) -> Result<Geo> {
        Geo::new(
            &self.x_dims,
            &self.w_dims,
            self.stride,
            self.padding,
            self.budget,
        )
    }
}

/// (dY, W) → dX.
struct BwdData<'a>(&'a BwdOp);
/// (X, dY) → dW.
struct BwdWeight<'a>(&'a BwdOp);

impl CustomOp2 for BwdData<'_> {
    fn name(&self) -> &'static str {
        "anodiff-conv2d-bwd-data"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geo()?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "{}: grad shape {:?} does not match output",
                self.name(),
                l1.dims()
            )
        }
        if let (Some(tile), CpuStorage::F32(_), CpuStorage::F32(_)) =
            (g.winograd(self.0.winograd), s1, s2)
        {
            // dX = dY ⋆ rot180(Wᵀ) with padding 2 − p: the forward transform on the gradient.
            let (gy, w) = (
                slice::<f32>(s1, l1, self.name())?,
                slice::<f32>(s2, l2, self.name())?,
            );
            let plan = winograd::Plan {
                n: g.n,
                c: g.o,
                h: g.ho,
                w: g.wo,
                o: g.c,
                pad: 2 - g.p,
            };
            let u = winograd::transform_weights(w, g.o, g.c, true, tile);
            let dx = winograd::conv(&plan, gy, &u, tile);
            return Ok((CpuStorage::F32(dx), Shape::from(self.0.x_dims.clone())));
        }
        let dx = dispatch!(s1, l1, s2, l2, self.name(), |gy, w| bwd_data(&g, gy, w));
        Ok((dx, Shape::from(self.0.x_dims.clone())))
    }
}

impl CustomOp2 for BwdWeight<'_> {
    fn name(&self) -> &'static str {
        "anodiff-conv2d-bwd-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geo()?;
        if l2.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "{}: grad shape {:?} does not match output",
                self.name(),
                l2.dims()
            )
        }
        if let (Some(tile), CpuStorage::F32(_), CpuStorage::F32(_)) =
            (g.winograd(self.0.winograd), s1, s2)
        {
            let (x, gy) = (
                slice::<f32>(s1, l1, self.name())?,
                slice::<f32>(s2, l2, self.name())?,
            );
            let plan = g.plan();
            let dw = winograd::weight_grad(&plan, x, gy, tile);
            return Ok((CpuStorage::F32(dw), Shape::from(self.0.w_dims.clone())));
        }
        let dw = dispatch!(s1, l1, s2, l2, self.name(), |x, gy| bwd_weight(&g, x, gy));
        Ok((dw, Shape::from(self.0.w_dims.clone())))
    }
}
