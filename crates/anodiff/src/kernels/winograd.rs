//! Winograd F(m×m, 3×3) for stride-1 3×3 convolutions in f32 (Lavin & Gray 2016): the forward
//! conv, its input gradient (the same transform with flipped, transposed weights) and its weight
//! gradient (the exact adjoint of the transforms).
//!
//! Why: on this class of CPU the `gemm` microkernel is the ceiling of the im2col path. Winograd
//! computes each m×m output tile from an (m+2)×(m+2) input tile with (m+2)² multiplies per channel
//! pair instead of 9·m²: F(2×2, 3×3) needs 2.25× and F(4×4, 3×3) 4× fewer GEMM flops. The price is
//! rounding: F(2,3) stays close to direct convolution, F(4,3) is ~10× less accurate (its transforms
//! carry coefficients up to 8; ≤ 1e-5 relative per conv in `tests/kernels.rs`). Over a whole SD-1.5
//! LoRA step (`examples/winograd_training_error.rs`) F(4,3) moves the LoRA gradients by 1.1e-5
//! (median tensor) to 2.6e-5 (worst) relative to im2col, F(2,3) by 4e-6 / 9e-6: far below the noise
//! of stochastic training, so `conv2d` uses F(4,3) for training too (forward, dX and dW), where a
//! layer has enough tiles. `ANODIFF_WINOGRAD=2` caps it at F(2,3), `=0` turns Winograd off.
//!
//! Data flow per chunk of tiles (tiles of all images are numbered together so small feature maps
//! still make wide GEMMs):
//! 1. input transform `V[ξ][c][t] = (Bᵀ d_t B)[ξ]` for the (m+2)² positions ξ;
//! 2. `M[ξ] = U[ξ] · V[ξ]` with the transformed weights `U[ξ][o][c] = (G g Gᵀ)[ξ]`;
//! 3. output transform `Y_t = Aᵀ M_t A`, written into the NCHW output.

// Lane loops index several arrays by the same lane or position; iterators would obscure the maps.
#![allow(clippy::needless_range_loop)]

use super::gemm::{matmul_ex, Mat};
use super::simd::simd_dispatch;
use rayon::prelude::*;

/// Floats per transformed buffer (V and M each): bounds memory on big images while keeping every
/// SD-1.5 map at 512 px batch 2 in one chunk (wide GEMMs are the efficient ones). Stays under the
/// 32 MiB mmap threshold set by `runtime::tune_allocator`, so the buffers are reused heap memory.
const BUDGET: usize = 7 << 20;

/// Floats per transformed buffer a narrow layer's chunk aims at, so V and M stay in a core's L2
/// cache between the input transform, the GEMMs and the output transform. At the localisation
/// net's 16 channels and 128 px the whole-batch chunk (19 MB per buffer) made the transforms
/// memory-bound; 256 KB chunks took ~10 % off its training step (BENCHMARKS.md). Chunks keep at
/// least 128 tiles and twice the channel count, so GEMMs stay wide and wide layers (SD-1.5's
/// 320+ channels) keep the chunks they had.
const CACHED: usize = 1 << 16;

/// Tiles (or filters) transformed together, one per SIMD lane.
const L: usize = 8;
type Lanes = [f32; L];

/// Output tile size of the Winograd variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2×2, 3×3): 16 GEMMs, near-direct accuracy.
    F2,
    /// F(4×4, 3×3): 36 GEMMs, 1.8× fewer flops than F2, ~10× larger rounding error.
    F4,
}

/// The largest Winograd variant convolutions may use, from `ANODIFF_WINOGRAD`: `0` none (im2col
/// everywhere), `2` F(2,3) only, unset or anything else F(4,3) where a layer has enough tiles.
pub fn mode() -> Option<Tile> {
    match std::env::var("ANODIFF_WINOGRAD").as_deref() {
        Ok("0") => None,
        Ok("2") => Some(Tile::F2),
        _ => Some(Tile::F4),
    }
}

/// The five 1-D maps of one variant, each on a column of lane vectors: `Bᵀ d`, `G g`, `Aᵀ m` and
/// the adjoints `A y`, `Gᵀ u` used by the weight gradient.
trait Transforms<const M: usize, const A: usize> {
    fn bt(d: [Lanes; A]) -> [Lanes; A];
    fn gt(g: [Lanes; 3]) -> [Lanes; A];
    fn at(m: [Lanes; A]) -> [Lanes; M];
    fn a(y: [Lanes; M]) -> [Lanes; A];
    fn g(u: [Lanes; A]) -> [Lanes; 3];
}

/// F(2, 3) with interpolation points 0, ±1, ∞.
struct F23;
/// F(4, 3) with interpolation points 0, ±1, ±2, ∞.
struct F43;

impl Transforms<2, 4> for F23 {
    #[inline(always)]
    fn bt(d: [Lanes; 4]) -> [Lanes; 4] {
        let mut r = [[0f32; L]; 4];
        for l in 0..L {
            let (d0, d1, d2, d3) = (d[0][l], d[1][l], d[2][l], d[3][l]);
            r[0][l] = d0 - d2;
            r[1][l] = d1 + d2;
            r[2][l] = d2 - d1;
            r[3][l] = d1 - d3;
        }
        r
    }
    #[inline(always)]
    fn gt(g: [Lanes; 3]) -> [Lanes; 4] {
        let mut r = [[0f32; L]; 4];
        for l in 0..L {
            let (g0, g1, g2) = (g[0][l], g[1][l], g[2][l]);
            r[0][l] = g0;
            r[1][l] = (g0 + g1 + g2) * 0.5;
            r[2][l] = (g0 - g1 + g2) * 0.5;
            r[3][l] = g2;
        }
        r
    }
    #[inline(always)]
    fn at(m: [Lanes; 4]) -> [Lanes; 2] {
        let mut r = [[0f32; L]; 2];
        for l in 0..L {
            let (m0, m1, m2, m3) = (m[0][l], m[1][l], m[2][l], m[3][l]);
            r[0][l] = m0 + m1 + m2;
            r[1][l] = m1 - m2 - m3;
        }
        r
    }
    #[inline(always)]
    fn a(y: [Lanes; 2]) -> [Lanes; 4] {
        let mut r = [[0f32; L]; 4];
        for l in 0..L {
            let (y0, y1) = (y[0][l], y[1][l]);
            r[0][l] = y0;
            r[1][l] = y0 + y1;
            r[2][l] = y0 - y1;
            r[3][l] = -y1;
        }
        r
    }
    #[inline(always)]
    fn g(u: [Lanes; 4]) -> [Lanes; 3] {
        let mut r = [[0f32; L]; 3];
        for l in 0..L {
            let (u0, u1, u2, u3) = (u[0][l], u[1][l], u[2][l], u[3][l]);
            r[0][l] = u0 + (u1 + u2) * 0.5;
            r[1][l] = (u1 - u2) * 0.5;
            r[2][l] = (u1 + u2) * 0.5 + u3;
        }
        r
    }
}

impl Transforms<4, 6> for F43 {
    #[inline(always)]
    fn bt(d: [Lanes; 6]) -> [Lanes; 6] {
        let mut r = [[0f32; L]; 6];
        for l in 0..L {
            let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
            r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            r[1][l] = (d3 + d4) - 4.0 * (d1 + d2);
            r[2][l] = (d4 - d3) + 4.0 * (d1 - d2);
            r[3][l] = (d4 - d2) + 2.0 * (d3 - d1);
            r[4][l] = (d4 - d2) - 2.0 * (d3 - d1);
            r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        r
    }
    #[inline(always)]
    fn gt(g: [Lanes; 3]) -> [Lanes; 6] {
        let mut r = [[0f32; L]; 6];
        for l in 0..L {
            let (g0, g1, g2) = (g[0][l], g[1][l], g[2][l]);
            r[0][l] = g0 * (1.0 / 4.0);
            r[1][l] = (g0 + g1 + g2) * (-1.0 / 6.0);
            r[2][l] = (g0 - g1 + g2) * (-1.0 / 6.0);
            r[3][l] = g0 * (1.0 / 24.0) + g1 * (1.0 / 12.0) + g2 * (1.0 / 6.0);
            r[4][l] = g0 * (1.0 / 24.0) - g1 * (1.0 / 12.0) + g2 * (1.0 / 6.0);
            r[5][l] = g2;
        }
        r
    }
    #[inline(always)]
    fn at(m: [Lanes; 6]) -> [Lanes; 4] {
        let mut r = [[0f32; L]; 4];
        for l in 0..L {
            let (m0, m1, m2, m3, m4, m5) = (m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]);
            let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
            r[0][l] = m0 + s12 + s34;
            r[1][l] = d12 + 2.0 * d34;
            r[2][l] = s12 + 4.0 * s34;
            r[3][l] = d12 + 8.0 * d34 + m5;
        }
        r
    }
    #[inline(always)]
    fn a(y: [Lanes; 4]) -> [Lanes; 6] {
        let mut r = [[0f32; L]; 6];
        for l in 0..L {
            let (y0, y1, y2, y3) = (y[0][l], y[1][l], y[2][l], y[3][l]);
            let (e, o) = (y0 + y2, y1 + y3);
            let (e4, o2) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
            r[0][l] = y0;
            r[1][l] = e + o;
            r[2][l] = e - o;
            r[3][l] = e4 + o2;
            r[4][l] = e4 - o2;
            r[5][l] = y3;
        }
        r
    }
    #[inline(always)]
    fn g(u: [Lanes; 6]) -> [Lanes; 3] {
        let mut r = [[0f32; L]; 3];
        for l in 0..L {
            let (u0, u1, u2, u3, u4, u5) = (u[0][l], u[1][l], u[2][l], u[3][l], u[4][l], u[5][l]);
            r[0][l] = u0 * (1.0 / 4.0) - (u1 + u2) * (1.0 / 6.0) + (u3 + u4) * (1.0 / 24.0);
            r[1][l] = (u2 - u1) * (1.0 / 6.0) + (u3 - u4) * (1.0 / 12.0);
            r[2][l] = (u3 + u4 - u1 - u2) * (1.0 / 6.0) + u5;
        }
        r
    }
}

/// `T X Tᵀ` for a lane-wise 1-D transform `t` (C inputs → R outputs): columns, then rows.
#[inline(always)]
fn two_sided<const C: usize, const R: usize>(
    x: &[[Lanes; C]; C],
    t: impl Fn([Lanes; C]) -> [Lanes; R],
) -> [[Lanes; R]; R] {
    let mut cols = [[[0f32; L]; C]; R];
    for j in 0..C {
        let c = t(std::array::from_fn(|i| x[i][j]));
        for i in 0..R {
            cols[i][j] = c[i];
        }
    }
    std::array::from_fn(|i| t(cols[i]))
}

/// An uninitialised f32 buffer: every element the GEMMs read was written by a transform first,
/// so zeroing ~30 MB per call would be pure cost.
fn scratch(n: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// Writes the first `n` lanes of `v` to `dst`: a fixed-size store for full groups (a
/// variable-length `copy_from_slice` here compiles to a `memmove` call per 8 floats).
///
/// # Safety
/// `dst` must be valid for `n ≤ L` writes.
#[inline(always)]
unsafe fn store(dst: *mut f32, v: &Lanes, n: usize) {
    if n == L {
        std::ptr::write_unaligned(dst.cast::<Lanes>(), *v);
    } else {
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, n);
    }
}

/// Reads `n` lanes from `src` (the rest stay zero); the fixed-size counterpart of [`store`].
#[inline(always)]
fn load(src: &[f32], n: usize) -> Lanes {
    match src.get(..L) {
        Some(full) if n == L => full.try_into().unwrap_or([0f32; L]),
        _ => std::array::from_fn(|l| if l < n { src[l] } else { 0.0 }),
    }
}

/// Raw pointer that may cross into rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The first tile of a lane group when the group is a full row run, F(4,3) layout: eight tiles
/// of one image and tile row with consecutive columns. Their input windows then overlap in one
/// strip of each image row, and their outputs fill 32 consecutive pixels of it, so the gather
/// into lanes (and the scatter back) is a fixed 8×4 transpose instead of per-tile scalar moves
/// (which were most of the transforms' time at the localisation net's 8-16 channels).
#[inline(always)]
fn row_run(at: &[Where], q0: usize, n: usize) -> Option<Where> {
    if n != L {
        return None;
    }
    let (first, last) = (at[q0], at[q0 + L - 1]);
    (first.0 == last.0 && first.1 == last.1 && last.2 == first.2 + L - 1).then_some(first)
}

/// `g[j][l] = s[4·l + j]` for `s` of at least 32 floats: lane l gets the l-th group of four.
#[inline(always)]
fn gather4(s: &[f32]) -> [Lanes; 4] {
    assert!(s.len() >= 32);
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2 checked; 32 floats readable (asserted).
        return unsafe { gather4_avx2(s.as_ptr()) };
    }
    std::array::from_fn(|j| std::array::from_fn(|l| s[4 * l + j]))
}

/// [`gather4`] with AVX2: each register holds groups l and l + 4 (one per 128-bit half), so the
/// 4×4 transposes within halves come out in lane order.
///
/// # Safety
/// AVX2 must be available and `s` valid for 32 reads.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather4_avx2(s: *const f32) -> [Lanes; 4] {
    use std::arch::x86_64::*;
    let v0 = _mm256_loadu2_m128(s.add(16), s);
    let v1 = _mm256_loadu2_m128(s.add(20), s.add(4));
    let v2 = _mm256_loadu2_m128(s.add(24), s.add(8));
    let v3 = _mm256_loadu2_m128(s.add(28), s.add(12));
    let (a, b) = (_mm256_unpacklo_ps(v0, v1), _mm256_unpacklo_ps(v2, v3));
    let (c, d) = (_mm256_unpackhi_ps(v0, v1), _mm256_unpackhi_ps(v2, v3));
    let mut g = [[0f32; L]; 4];
    _mm256_storeu_ps(g[0].as_mut_ptr(), _mm256_shuffle_ps::<0x44>(a, b));
    _mm256_storeu_ps(g[1].as_mut_ptr(), _mm256_shuffle_ps::<0xEE>(a, b));
    _mm256_storeu_ps(g[2].as_mut_ptr(), _mm256_shuffle_ps::<0x44>(c, d));
    _mm256_storeu_ps(g[3].as_mut_ptr(), _mm256_shuffle_ps::<0xEE>(c, d));
    g
}

/// The inverse of [`gather4`]: `out[4·l + j] = y[j][l]`.
#[inline(always)]
fn scatter4(y: &[Lanes; 4]) -> [f32; 4 * L] {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2 checked.
        return unsafe { scatter4_avx2(y) };
    }
    std::array::from_fn(|k| y[k % 4][k / 4])
}

/// [`scatter4`] with AVX2, the transposes of [`gather4_avx2`] run backwards.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scatter4_avx2(y: &[Lanes; 4]) -> [f32; 4 * L] {
    use std::arch::x86_64::*;
    let [y0, y1, y2, y3] = [0, 1, 2, 3].map(|j| _mm256_loadu_ps(y[j].as_ptr()));
    let (a, b) = (_mm256_unpacklo_ps(y0, y1), _mm256_unpacklo_ps(y2, y3));
    let (c, d) = (_mm256_unpackhi_ps(y0, y1), _mm256_unpackhi_ps(y2, y3));
    let mut out = [0f32; 4 * L];
    let o = out.as_mut_ptr();
    _mm256_storeu2_m128(o.add(16), o, _mm256_shuffle_ps::<0x44>(a, b));
    _mm256_storeu2_m128(o.add(20), o.add(4), _mm256_shuffle_ps::<0xEE>(a, b));
    _mm256_storeu2_m128(o.add(24), o.add(8), _mm256_shuffle_ps::<0x44>(c, d));
    _mm256_storeu2_m128(o.add(28), o.add(12), _mm256_shuffle_ps::<0xEE>(c, d));
    out
}

/// Transformed weights `U[ξ][o][c]` of `w: [O, C, 3, 3]`. With `flip`, the weights of the input
/// gradient instead: `U[ξ][c][o]` of `w[o][c]` rotated by 180°.
pub fn transform_weights(w: &[f32], o: usize, c: usize, flip: bool, tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => transform_weights_t::<2, 4, F23>(w, o, c, flip),
        Tile::F4 => transform_weights_t::<4, 6, F43>(w, o, c, flip),
    }
}

fn transform_weights_t<const M: usize, const A: usize, T: Transforms<M, A>>(
    w: &[f32],
    o: usize,
    c: usize,
    flip: bool,
) -> Vec<f32> {
    let mut u = vec![0f32; A * A * o * c];
    let (rows, cols) = if flip { (c, o) } else { (o, c) };
    let up = Ptr(u.as_mut_ptr());
    (0..rows)
        .into_par_iter()
        .for_each(|r| simd_dispatch!(weight_row::<M, A, T>(w, o, c, flip, r, rows, cols, up)));
    u
}

/// One row `r` of every `U[ξ]`, 8 filters at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weight_row<const M: usize, const A: usize, T: Transforms<M, A>>(
    w: &[f32],
    _o: usize,
    c: usize,
    flip: bool,
    r: usize,
    rows: usize,
    cols: usize,
    up: Ptr,
) {
    for q0 in (0..cols).step_by(L) {
        let n = L.min(cols - q0);
        let mut g = [[[0f32; L]; 3]; 3];
        for l in 0..n {
            let (oi, ci) = if flip { (q0 + l, r) } else { (r, q0 + l) };
            let src = &w[(oi * c + ci) * 9..(oi * c + ci + 1) * 9];
            for i in 0..3 {
                for j in 0..3 {
                    g[i][j][l] = if flip {
                        src[(2 - i) * 3 + 2 - j]
                    } else {
                        src[i * 3 + j]
                    };
                }
            }
        }
        let t = two_sided(&g, T::gt);
        for (xi, v) in t.iter().flatten().enumerate() {
            // SAFETY: (xi, r, q0..q0+n) belongs to this task and lies inside `u`.
            unsafe { store(up.get().add((xi * rows + r) * cols + q0), v, n) };
        }
    }
}

/// Geometry of one Winograd convolution: `x: [N, C, H, W]` → `[N, O, Ho, Wo]`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl Plan {
    fn ho(&self) -> usize {
        self.h + 2 * self.pad - 2
    }
    fn wo(&self) -> usize {
        self.w + 2 * self.pad - 2
    }
    /// Tile rows and columns for output tiles of side `m`.
    fn tiles(&self, m: usize) -> (usize, usize) {
        (self.ho().div_ceil(m), self.wo().div_ceil(m))
    }
    /// (image, tile row, tile column) of tiles `t0..t0 + tc`, counted up rather than divided
    /// out: the per-channel transforms look every tile up once per channel, and three integer
    /// divisions per lookup cost as much as gathering the tile.
    fn tiles_from(&self, t0: usize, tc: usize, m: usize) -> Vec<Where> {
        let (th, tw) = self.tiles(m);
        let (mut b, mut ty, mut tx) = (t0 / (th * tw), (t0 / tw) % th, t0 % tw);
        (0..tc)
            .map(|_| {
                let here = (b, ty, tx);
                tx += 1;
                if tx == tw {
                    (tx, ty) = (0, ty + 1);
                    if ty == th {
                        (ty, b) = (0, b + 1);
                    }
                }
                here
            })
            .collect()
    }
}

/// (image, tile row, tile column) of one tile.
type Where = (usize, usize, usize);

/// Input transform of channel `ci` for the chunk's tiles `at` into `V[ξ][ci][·]`.
#[inline(always)]
fn input_channel<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    x: &[f32],
    ci: usize,
    at: &[Where],
    vp: Ptr,
) {
    let tc = at.len();
    let hw = p.h * p.w;
    let pad = p.pad as isize;
    for q0 in (0..tc).step_by(L) {
        let n = L.min(tc - q0);
        let mut d = [[[0f32; L]; A]; A];
        match row_run(at, q0, n) {
            Some((b, ty, tx)) if M == 4 => {
                // Lane l, column j reads input column x0 + 4l + j (j < 6): one 36-float strip per
                // row, read in place when inside the image, else from a zero-padded copy.
                let xc = &x[(b * p.c + ci) * hw..(b * p.c + ci + 1) * hw];
                let (y0, x0) = ((ty * M) as isize - pad, (tx * M) as isize - pad);
                for (i, di) in d.iter_mut().enumerate() {
                    let yy = y0 + i as isize;
                    if yy < 0 || yy >= p.h as isize {
                        continue;
                    }
                    let row = &xc[yy as usize * p.w..(yy as usize + 1) * p.w];
                    let mut strip = [0f32; 36];
                    let src: &[f32] = if x0 >= 0 && x0 as usize + 36 <= p.w {
                        &row[x0 as usize..x0 as usize + 36]
                    } else {
                        for (k, v) in strip.iter_mut().enumerate() {
                            let xx = x0 + k as isize;
                            if xx >= 0 && xx < p.w as isize {
                                *v = row[xx as usize];
                            }
                        }
                        &strip
                    };
                    let (lo, hi) = (gather4(&src[..32]), gather4(&src[4..]));
                    for (j, dj) in di.iter_mut().enumerate() {
                        *dj = if j < 4 { lo[j] } else { hi[j - 4] };
                    }
                }
            }
            _ => input_tiles::<M, A>(p, x, ci, &at[q0..q0 + n], &mut d),
        }
        let v = two_sided(&d, T::bt);
        for (xi, vv) in v.iter().flatten().enumerate() {
            // SAFETY: (xi, ci, q0..q0+n) belongs to this task and lies inside the V chunk.
            unsafe { store(vp.get().add((xi * p.c + ci) * tc + q0), vv, n) };
        }
    }
}

/// Gathers the (m+2)² input windows of `tiles` (any positions) into the lanes of `d`, tile by
/// tile, with the zero padding.
#[inline(always)]
fn input_tiles<const M: usize, const A: usize>(
    p: &Plan,
    x: &[f32],
    ci: usize,
    tiles: &[Where],
    d: &mut [[Lanes; A]; A],
) {
    let hw = p.h * p.w;
    let pad = p.pad as isize;
    for (l, &(b, ty, tx)) in tiles.iter().enumerate() {
        let xc = &x[(b * p.c + ci) * hw..(b * p.c + ci + 1) * hw];
        let (y0, x0) = ((ty * M) as isize - pad, (tx * M) as isize - pad);
        let inside = y0 >= 0 && x0 >= 0 && y0 as usize + A <= p.h && x0 as usize + A <= p.w;
        if inside {
            let at = y0 as usize * p.w + x0 as usize;
            for (i, di) in d.iter_mut().enumerate() {
                let row = &xc[at + i * p.w..][..A];
                for (dj, &v) in di.iter_mut().zip(row) {
                    dj[l] = v;
                }
            }
            continue;
        }
        for (i, di) in d.iter_mut().enumerate() {
            let yy = y0 + i as isize;
            if yy < 0 || yy >= p.h as isize {
                continue;
            }
            let row = &xc[yy as usize * p.w..(yy as usize + 1) * p.w];
            for (j, dj) in di.iter_mut().enumerate() {
                let xx = x0 + j as isize;
                if xx >= 0 && xx < p.w as isize {
                    dj[l] = row[xx as usize];
                }
            }
        }
    }
}

/// Output transform of channel `oi` for the chunk's tiles `at` from `M[ξ][oi][·]` into the
/// output.
#[inline(always)]
fn output_channel<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    m: &[f32],
    oi: usize,
    at: &[Where],
    op: Ptr,
) {
    let tc = at.len();
    let (ho, wo) = (p.ho(), p.wo());
    for q0 in (0..tc).step_by(L) {
        let n = L.min(tc - q0);
        let mut s = [[[0f32; L]; A]; A];
        for (xi, sv) in s.iter_mut().flatten().enumerate() {
            *sv = load(&m[(xi * p.o + oi) * tc + q0..], n);
        }
        let y = two_sided(&s, T::at);
        if let (Some((b, ty, tx)), 4) = (row_run(at, q0, n), M) {
            // The eight tiles' rows are 32 consecutive output pixels (fewer at the right edge).
            let base = (b * p.o + oi) * ho * wo;
            let count = (4 * L).min(wo - tx * M);
            for (i, yi) in y.iter().enumerate().take(ho - ty * M) {
                let run = scatter4(&std::array::from_fn(|j| yi[j]));
                let dst = base + (ty * M + i) * wo + tx * M;
                // SAFETY: the `count` pixels from `dst` are inside the output row and owned by
                // this task (channel oi).
                unsafe {
                    if count == 4 * L {
                        std::ptr::write_unaligned(op.get().add(dst).cast::<[f32; 4 * L]>(), run);
                    } else {
                        std::ptr::copy_nonoverlapping(run.as_ptr(), op.get().add(dst), count);
                    }
                }
            }
            continue;
        }
        for l in 0..n {
            let (b, ty, tx) = at[q0 + l];
            let base = (b * p.o + oi) * ho * wo;
            for (i, yi) in y.iter().enumerate().take(ho - ty * M) {
                let row = base + (ty * M + i) * wo + tx * M;
                for (j, yj) in yi.iter().enumerate().take(wo - tx * M) {
                    // SAFETY: (b, oi, oy, ox) is inside the output and owned by this task.
                    unsafe { *op.get().add(row + j) = yj[l] };
                }
            }
        }
    }
}

/// Adjoint of the output transform for channel `oi`: `Ŷ[ξ][oi][·] = (A dY_t Aᵀ)[ξ]`, with the
/// positions past the output edge read as zero.
#[inline(always)]
fn grad_channel<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    dy: &[f32],
    oi: usize,
    at: &[Where],
    gp: Ptr,
) {
    let tc = at.len();
    let (ho, wo) = (p.ho(), p.wo());
    for q0 in (0..tc).step_by(L) {
        let n = L.min(tc - q0);
        let mut d = [[[0f32; L]; M]; M];
        if let (Some((b, ty, tx)), 4) = (row_run(at, q0, n), M) {
            // The eight tiles' rows are 32 consecutive pixels of dY, zero past the right edge.
            let base = (b * p.o + oi) * ho * wo;
            let count = (4 * L).min(wo - tx * M);
            for (i, di) in d.iter_mut().enumerate().take(ho - ty * M) {
                let row = &dy[base + (ty * M + i) * wo + tx * M..][..count];
                let mut strip = [0f32; 4 * L];
                let src: &[f32] = if count == 4 * L {
                    row
                } else {
                    strip[..count].copy_from_slice(row);
                    &strip
                };
                let g = gather4(src);
                for (j, dj) in di.iter_mut().enumerate() {
                    *dj = g[j];
                }
            }
        } else {
            grad_tiles::<M>(p, dy, oi, &at[q0..q0 + n], &mut d);
        }
        let v = two_sided(&d, T::a);
        for (xi, vv) in v.iter().flatten().enumerate() {
            // SAFETY: (xi, oi, q0..q0+n) belongs to this task and lies inside the Ŷ chunk.
            unsafe { store(gp.get().add((xi * p.o + oi) * tc + q0), vv, n) };
        }
    }
}

/// Gathers the m×m blocks of dY of `tiles` (any positions) into the lanes of `d`, zero past the
/// output edge.
#[inline(always)]
fn grad_tiles<const M: usize>(
    p: &Plan,
    dy: &[f32],
    oi: usize,
    tiles: &[Where],
    d: &mut [[Lanes; M]; M],
) {
    let (ho, wo) = (p.ho(), p.wo());
    for (l, &(b, ty, tx)) in tiles.iter().enumerate() {
        let base = (b * p.o + oi) * ho * wo;
        for (i, di) in d.iter_mut().enumerate().take(ho - ty * M) {
            let row = &dy[base + (ty * M + i) * wo + tx * M..];
            for (j, dj) in di.iter_mut().enumerate().take(wo - tx * M) {
                dj[l] = row[j];
            }
        }
    }
}

/// The tiles of all images, and how many go in one chunk: about `CACHED` floats of transformed
/// data per buffer, never more than `BUDGET` (shared by the forward and the weight gradient).
fn chunking(p: &Plan, m: usize, a: usize) -> (usize, usize) {
    let (th, tw) = p.tiles(m);
    let tiles = p.n * th * tw;
    let per_tile = a * a * p.c.max(p.o);
    let want = (CACHED / per_tile).max(128).max(2 * p.c.max(p.o));
    (tiles, want.min(BUDGET / per_tile).clamp(1, tiles))
}

/// Input transform of the chunk's tiles `at` into `v` (`V[ξ][c][t]`), one task per channel.
fn input_transform<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    x: &[f32],
    at: &[Where],
    v: &mut [std::mem::MaybeUninit<f32>],
) {
    let vp = Ptr(v.as_mut_ptr().cast());
    (0..p.c)
        .into_par_iter()
        .for_each(|ci| simd_dispatch!(input_channel::<M, A, T>(p, x, ci, at, vp)));
}

/// Weight gradient of [`conv`]: `dW[o][c] = Gᵀ (Σ_t Ŷ_t[o] ⊙ V_t[c]) G`, the exact adjoint of the
/// forward's transforms, so F(4,3) also cuts the backward GEMM flops by 4×. Returns `[O, C, 3, 3]`.
pub fn weight_grad(p: &Plan, x: &[f32], dy: &[f32], tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_grad_t::<2, 4, F23>(p, x, dy),
        Tile::F4 => weight_grad_t::<4, 6, F43>(p, x, dy),
    }
}

fn weight_grad_t<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let aa = A * A;
    let (tiles, chunk) = chunking(p, M, A);
    let mut v = scratch(aa * p.c * chunk);
    let mut gy = scratch(aa * p.o * chunk);
    let mut du = vec![0f32; aa * p.o * p.c];
    for (k, t0) in (0..tiles).step_by(chunk).enumerate() {
        let tc = chunk.min(tiles - t0);
        let at = &p.tiles_from(t0, tc, M);
        input_transform::<M, A, T>(p, x, at, &mut v);
        let gp = Ptr(gy.as_mut_ptr().cast());
        (0..p.o)
            .into_par_iter()
            .for_each(|oi| simd_dispatch!(grad_channel::<M, A, T>(p, dy, oi, at, gp)));
        let (vp, gp, dp) = (
            Ptr(v.as_mut_ptr().cast()),
            Ptr(gy.as_mut_ptr().cast()),
            Ptr(du.as_mut_ptr()),
        );
        (0..aa).into_par_iter().for_each(|xi| {
            // SAFETY: dU[ξ] is [O, C], Ŷ[ξ] is [O, tc], V[ξ] is [C, tc] read transposed; each ξ
            // accumulates into its own dU[ξ].
            unsafe {
                matmul_ex(
                    p.o,
                    p.c,
                    tc,
                    dp.get().add(xi * p.o * p.c),
                    p.c,
                    k > 0,
                    Mat::rows(gp.get().add(xi * p.o * tc), tc),
                    Mat::transposed(vp.get().add(xi * p.c * tc), tc),
                    1.0,
                    false,
                )
            }
        });
    }
    let mut dw = vec![0f32; p.o * p.c * 9];
    let wp = Ptr(dw.as_mut_ptr());
    let du = &du;
    (0..p.o)
        .into_par_iter()
        .for_each(|oi| simd_dispatch!(weight_grad_row::<M, A, T>(du, p.o, p.c, oi, wp)));
    dw
}

/// `dW[oi][c] = Gᵀ dU[·][oi][c] G`, 8 input channels at a time.
#[inline(always)]
fn weight_grad_row<const M: usize, const A: usize, T: Transforms<M, A>>(
    du: &[f32],
    o: usize,
    c: usize,
    oi: usize,
    wp: Ptr,
) {
    for c0 in (0..c).step_by(L) {
        let n = L.min(c - c0);
        let mut u = [[[0f32; L]; A]; A];
        for (xi, uv) in u.iter_mut().flatten().enumerate() {
            *uv = load(&du[(xi * o + oi) * c + c0..], n);
        }
        let gw = two_sided(&u, T::g);
        for l in 0..n {
            for (i, gi) in gw.iter().enumerate() {
                for (j, gj) in gi.iter().enumerate() {
                    // SAFETY: (oi, c0 + l, i, j) is inside dW and owned by this task.
                    unsafe { *wp.get().add(((oi * c + c0 + l) * 3 + i) * 3 + j) = gj[l] };
                }
            }
        }
    }
}

/// Stride-1 3×3 convolution of `x` with pre-transformed weights `u` (see [`transform_weights`]).
pub fn conv(p: &Plan, x: &[f32], u: &[f32], tile: Tile) -> Vec<f32> {
    match tile {
        Tile::F2 => conv_t::<2, 4, F23>(p, x, u),
        Tile::F4 => conv_t::<4, 6, F43>(p, x, u),
    }
}

fn conv_t<const M: usize, const A: usize, T: Transforms<M, A>>(
    p: &Plan,
    x: &[f32],
    u: &[f32],
) -> Vec<f32> {
    let aa = A * A;
    let (tiles, chunk) = chunking(p, M, A);
    // Every output element lies in exactly one tile and is written by the output transform, so
    // the buffer is not zeroed first (a memset of the whole output per call).
    let len = p.n * p.o * p.ho() * p.wo();
    let mut out = scratch(len);
    let mut v = scratch(aa * p.c * chunk);
    let mut m = scratch(aa * p.o * chunk);
    for t0 in (0..tiles).step_by(chunk) {
        let tc = chunk.min(tiles - t0);
        let at = &p.tiles_from(t0, tc, M);
        // 1. Input transform.
        input_transform::<M, A, T>(p, x, at, &mut v);
        // 2. One GEMM per position ξ; the positions are the parallel axis.
        let (vp, mp) = (Ptr(v.as_mut_ptr().cast()), Ptr(m.as_mut_ptr().cast()));
        (0..aa).into_par_iter().for_each(|xi| {
            // SAFETY: M[ξ] is [O, tc], U[ξ] is [O, C], V[ξ] is [C, tc]; each ξ writes its own M[ξ].
            unsafe {
                matmul_ex(
                    p.o,
                    tc,
                    p.c,
                    mp.get().add(xi * p.o * tc),
                    tc,
                    false,
                    Mat::rows(u.as_ptr().add(xi * p.o * p.c), p.c),
                    Mat::rows(vp.get().add(xi * p.c * tc), tc),
                    1.0,
                    false,
                )
            }
        });
        // 3. Output transform, one task per output channel.
        let op = Ptr(out.as_mut_ptr().cast());
        // SAFETY: the GEMMs above wrote all aa·O·tc elements.
        let m = unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), aa * p.o * tc) };
        (0..p.o)
            .into_par_iter()
            .for_each(|oi| simd_dispatch!(output_channel::<M, A, T>(p, m, oi, at, op)));
    }
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: all `len` elements were written above (the tiles cover the output); MaybeUninit<f32>
    // and f32 have the same layout, and the allocation is handed over whole.
    unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), len, out.capacity()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The dense matrices the sparse maps are written from (Lavin & Gray, points 0, ±1, (±2), ∞).
    const BT2: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const G2: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
    const BT4: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const G4: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const AT4: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn lanes<const N: usize>(x: &[f32]) -> [Lanes; N] {
        std::array::from_fn(|k| std::array::from_fn(|l| x[k * L + l]))
    }

    /// `y = mat · x` per lane, for comparing a sparse map with its dense matrix.
    fn dense<const R: usize, const C: usize>(mat: &[[f32; C]; R], x: &[Lanes]) -> [Lanes; R] {
        std::array::from_fn(|i| std::array::from_fn(|l| (0..C).map(|k| mat[i][k] * x[k][l]).sum()))
    }

    fn close<const R: usize>(got: [Lanes; R], want: [Lanes; R], what: &str) {
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-5, "{what}: {g} vs {w}");
        }
    }

    fn transposed<const R: usize, const C: usize>(m: &[[f32; C]; R]) -> [[f32; R]; C] {
        std::array::from_fn(|i| std::array::from_fn(|j| m[j][i]))
    }

    fn check_maps<const M: usize, const A: usize, T: Transforms<M, A>>(
        bt: &[[f32; A]; A],
        g: &[[f32; 3]; A],
        at: &[[f32; A]; M],
    ) {
        let x = noise(A * L, 9);
        let d: [Lanes; A] = lanes(&x);
        close(T::bt(d), dense(bt, &d), "Bᵀ");
        close(T::at(d), dense(at, &d), "Aᵀ");
        close(T::g(d), dense(&transposed(g), &d), "Gᵀ");
        let g3: [Lanes; 3] = lanes(&x);
        close(T::gt(g3), dense(g, &g3), "G");
        let y: [Lanes; M] = lanes(&x);
        close(T::a(y), dense(&transposed(at), &y), "A");
        // 1-D F(m, 3): Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation of d with g.
        let (dd, gg) = (noise(A, 7), noise(3, 8));
        for (i, row) in at.iter().enumerate() {
            let got: f32 = (0..A)
                .map(|k| {
                    let gk: f32 = (0..3).map(|j| g[k][j] * gg[j]).sum();
                    let dk: f32 = (0..A).map(|j| bt[k][j] * dd[j]).sum();
                    row[k] * gk * dk
                })
                .sum();
            let want: f32 = (0..3).map(|j| dd[i + j] * gg[j]).sum();
            assert!((got - want).abs() < 1e-5, "output {i}: {got} vs {want}");
        }
    }

    #[test]
    fn lane_maps_match_the_matrices_and_compute_a_correlation() {
        check_maps::<2, 4, F23>(&BT2, &G2, &AT2);
        check_maps::<4, 6, F43>(&BT4, &G4, &AT4);
    }

    /// Direct 3×3 correlation reference in f64.
    fn direct(p: &Plan, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (ho, wo) = (p.ho(), p.wo());
        let mut y = vec![0f64; p.n * p.o * ho * wo];
        for b in 0..p.n {
            for o in 0..p.o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = 0f64;
                        for c in 0..p.c {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (iy, ix) = (oy + i, ox + j);
                                    if iy < p.pad || ix < p.pad {
                                        continue;
                                    }
                                    let (iy, ix) = (iy - p.pad, ix - p.pad);
                                    if iy >= p.h || ix >= p.w {
                                        continue;
                                    }
                                    s += x[((b * p.c + c) * p.h + iy) * p.w + ix] as f64
                                        * w[((o * p.c + c) * 3 + i) * 3 + j] as f64;
                                }
                            }
                        }
                        y[((b * p.o + o) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// max |got − want| / max |want|.
    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max);
        err / want.iter().fold(1e-30f64, |m, v| m.max(v.abs()))
    }

    #[test]
    fn matches_direct_convolution_on_ragged_shapes() {
        // Sizes not multiples of the tile, padding 0/1/2, several chunks of lanes.
        for &(n, c, h, w, o, pad) in &[
            (2, 3, 9, 7, 4, 1),
            (1, 5, 4, 4, 2, 0),
            (1, 2, 3, 5, 3, 2),
            (3, 4, 13, 6, 5, 1),
            (2, 11, 17, 9, 13, 1),
            // Wide rows: runs of eight F(4,3) tiles in one row (`row_run`), aligned (64 px),
            // ragged at the right edge (37, 70) and wrapping into the next row (37: 10 tiles).
            (2, 3, 6, 64, 5, 1),
            (1, 4, 9, 37, 3, 1),
            (1, 2, 5, 70, 3, 0),
            (1, 3, 5, 70, 2, 2),
        ] {
            let p = Plan { n, c, h, w, o, pad };
            let x = noise(n * c * h * w, 1);
            let wt = noise(o * c * 9, 2);
            let want = direct(&p, &x, &wt);
            for (tile, tol) in [(Tile::F2, 1e-6), (Tile::F4, 1e-5)] {
                let got = conv(&p, &x, &transform_weights(&wt, o, c, false, tile), tile);
                let e = rel_err(&got, &want);
                assert!(e <= tol, "{p:?} {tile:?}: relative error {e:e}");
            }
        }
    }

    #[test]
    fn weight_grad_matches_direct_correlation() {
        // dW[o][c][i][j] = Σ_{b,y,x} dY[b][o][y][x] · x_pad[b][c][y+i][x+j], in f64.
        for &(n, c, h, w, o, pad) in &[
            (2, 3, 9, 7, 4, 1),
            (1, 9, 6, 11, 10, 0),
            (1, 2, 5, 5, 3, 2),
            (2, 3, 6, 64, 5, 1),
            (1, 2, 7, 37, 3, 1),
            (1, 2, 5, 70, 3, 0),
        ] {
            let p = Plan { n, c, h, w, o, pad };
            let (ho, wo) = (p.ho(), p.wo());
            let x = noise(n * c * h * w, 11);
            let dy = noise(n * o * ho * wo, 12);
            let mut want = vec![0f64; o * c * 9];
            for oi in 0..o {
                for ci in 0..c {
                    for k in 0..9 {
                        let (i, j) = (k / 3, k % 3);
                        let mut s = 0f64;
                        for b in 0..n {
                            for y in 0..ho {
                                for xx in 0..wo {
                                    let (iy, ix) = (y + i, xx + j);
                                    if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                        continue;
                                    }
                                    s += dy[((b * o + oi) * ho + y) * wo + xx] as f64
                                        * x[((b * c + ci) * h + iy - pad) * w + ix - pad] as f64;
                                }
                            }
                        }
                        want[(oi * c + ci) * 9 + k] = s;
                    }
                }
            }
            for (tile, tol) in [(Tile::F2, 1e-6), (Tile::F4, 1e-5)] {
                let e = rel_err(&weight_grad(&p, &x, &dy, tile), &want);
                assert!(e <= tol, "{p:?} {tile:?}: relative error {e:e}");
            }
        }
    }

    #[test]
    fn flipped_weights_give_the_input_gradient() {
        // <conv(x, w), dy> = <x, conv_flip(dy)>: the adjoint identity the backward relies on.
        let p = Plan {
            n: 2,
            c: 3,
            h: 7,
            w: 6,
            o: 4,
            pad: 1,
        };
        let x = noise(p.n * p.c * p.h * p.w, 3);
        let wt = noise(p.o * p.c * 9, 4);
        let dy = noise(p.n * p.o * p.ho() * p.wo(), 5);
        for tile in [Tile::F2, Tile::F4] {
            let y = conv(&p, &x, &transform_weights(&wt, p.o, p.c, false, tile), tile);
            let q = Plan {
                n: p.n,
                c: p.o,
                h: p.ho(),
                w: p.wo(),
                o: p.c,
                pad: 2 - p.pad,
            };
            let dx = conv(&q, &dy, &transform_weights(&wt, p.o, p.c, true, tile), tile);
            assert_eq!(dx.len(), x.len());
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{tile:?}: {lhs} vs {rhs}"
            );
        }
    }
}
