//! Weight-free operations on per-pixel maps, shared by the classical foreground estimate
//! ([`super::foreground`]) and DualAnoDiff's mask extraction (`dual::mask`):
//!
//! - [`ScalarMap`]: a row-major `f32` map (e.g. a per-pixel colour distance) with separable
//!   Gaussian smoothing (edges clamped) and thresholding;
//! - [`otsu`]: Otsu's threshold on a 256-bin histogram spanning the values' range, with the
//!   separability (between-class over total variance) that tells how bimodal the values are;
//! - [`BinaryMask`]: connected components, small-component removal, hole filling, IoU.

use image::{GrayImage, Luma};

/// A row-major scalar map, `data[y * width + x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarMap {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` values, row-major.
    pub data: Vec<f32>,
}

impl ScalarMap {
    /// A map whose value at (x, y) is `f(x, y)`.
    pub fn from_fn(width: usize, height: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                data.push(f(x, y));
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Separable Gaussian smoothing with standard deviation `sigma` pixels (kernel radius
    /// ceil(3σ), image edges clamped). `sigma <= 0` returns a copy.
    pub fn gaussian_blur(&self, sigma: f32) -> Self {
        if sigma <= 0.0 || self.data.is_empty() {
            return self.clone();
        }
        let radius = (3.0 * sigma).ceil() as isize;
        let mut kernel: Vec<f32> = (-radius..=radius)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f32 = kernel.iter().sum();
        kernel.iter_mut().for_each(|k| *k /= sum);
        let (w, h) = (self.width as isize, self.height as isize);
        let mut tmp = vec![0f32; self.data.len()];
        for y in 0..h {
            let row = &self.data[(y * w) as usize..((y + 1) * w) as usize];
            for x in 0..w {
                let mut acc = 0.0;
                for (k, &kv) in kernel.iter().enumerate() {
                    let xx = (x + k as isize - radius).clamp(0, w - 1);
                    acc += kv * row[xx as usize];
                }
                tmp[(y * w + x) as usize] = acc;
            }
        }
        let mut out = vec![0f32; self.data.len()];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, &kv) in kernel.iter().enumerate() {
                    let yy = (y + k as isize - radius).clamp(0, h - 1);
                    acc += kv * tmp[(yy * w + x) as usize];
                }
                out[(y * w + x) as usize] = acc;
            }
        }
        Self {
            width: self.width,
            height: self.height,
            data: out,
        }
    }

    /// Each value replaced by the maximum over the (2r+1)×(2r+1) window around it (separable,
    /// clipped at the edges).
    pub fn max_filter(&self, radius: usize) -> Self {
        if radius == 0 || self.data.is_empty() {
            return self.clone();
        }
        let (w, h) = (self.width, self.height);
        let mut tmp = vec![0f32; self.data.len()];
        for y in 0..h {
            for x in 0..w {
                let (a, b) = (x.saturating_sub(radius), (x + radius + 1).min(w));
                tmp[y * w + x] = self.data[y * w + a..y * w + b]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
            }
        }
        let mut out = vec![0f32; self.data.len()];
        for y in 0..h {
            let (a, b) = (y.saturating_sub(radius), (y + radius + 1).min(h));
            for x in 0..w {
                out[y * w + x] = (a..b)
                    .map(|yy| tmp[yy * w + x])
                    .fold(f32::NEG_INFINITY, f32::max);
            }
        }
        Self {
            width: w,
            height: h,
            data: out,
        }
    }

    /// The pixels whose value is strictly above `t`.
    pub fn above(&self, t: f32) -> BinaryMask {
        BinaryMask {
            width: self.width,
            height: self.height,
            data: self.data.iter().map(|&v| v > t).collect(),
        }
    }

    /// Mean of the values where `mask` is `inside`; `None` when there is no such pixel.
    pub fn mean_where(&self, mask: &BinaryMask, inside: bool) -> Option<f32> {
        let (mut sum, mut n) = (0f64, 0usize);
        for (&v, &m) in self.data.iter().zip(&mask.data) {
            if m == inside {
                sum += v as f64;
                n += 1;
            }
        }
        (n > 0).then(|| (sum / n as f64) as f32)
    }
}

/// Share of a mask's pixels that are set (value ≥ 128), in [0, 1]; 0 for an empty image.
pub fn area_fraction(mask: &GrayImage) -> f64 {
    mask.iter().filter(|&&v| v >= 128).count() as f64 / mask.len().max(1) as f64
}

/// Otsu's split of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Otsu {
    /// Values strictly above this are the upper class.
    pub threshold: f32,
    /// Between-class variance over total variance, in [0, 1]: 1 for two spikes, about 0.64 for
    /// one Gaussian, 0.75 for a uniform spread.
    pub separability: f32,
}

/// Otsu's threshold over a 256-bin histogram of `values` between their minimum and maximum
/// (non-finite values ignored). `None` when fewer than two distinct values remain. Where several
/// bins tie for the best split (an empty gap between two modes), the threshold is the middle of
/// the gap, not its edge.
pub fn otsu(values: &[f32]) -> Option<Otsu> {
    const BINS: usize = 256;
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f32::INFINITY, f32::min);
    let hi = finite().fold(f32::NEG_INFINITY, f32::max);
    if hi <= lo {
        return None;
    }
    let scale = BINS as f64 / (hi - lo) as f64;
    let mut hist = [0u64; BINS];
    for v in finite() {
        let b = (((v - lo) as f64 * scale) as usize).min(BINS - 1);
        hist[b] += 1;
    }
    let total: u64 = hist.iter().sum();
    let centre = |b: usize| lo as f64 + (b as f64 + 0.5) / scale;
    let sum_all: f64 = (0..BINS).map(|b| hist[b] as f64 * centre(b)).sum();
    let mean = sum_all / total as f64;
    let var_total: f64 = (0..BINS)
        .map(|b| hist[b] as f64 * (centre(b) - mean).powi(2))
        .sum::<f64>()
        / total as f64;
    let (mut w0, mut s0) = (0f64, 0f64);
    let mut best = -1f64;
    let (mut first, mut last) = (0usize, 0usize);
    for (b, &count) in hist.iter().enumerate().take(BINS - 1) {
        w0 += count as f64;
        s0 += count as f64 * centre(b);
        let w1 = total as f64 - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (s0 / w0, (sum_all - s0) / w1);
        let between = w0 * w1 * (m0 - m1).powi(2) / (total as f64 * total as f64);
        // Relative tolerance: equal splits across an empty gap differ only by rounding.
        if between > best * (1.0 + 1e-9) {
            best = between;
            first = b;
            last = b;
        } else if (between - best).abs() <= best * 1e-9 {
            last = b;
        }
    }
    if best < 0.0 {
        return None;
    }
    // Upper edge of the middle bin of the tied run.
    let mid = (first + last + 1) as f64 / 2.0;
    let threshold = (lo as f64 + mid / scale) as f32;
    let separability = if var_total > 0.0 {
        (best / var_total).clamp(0.0, 1.0) as f32
    } else {
        0.0
    };
    Some(Otsu {
        threshold,
        separability,
    })
}

/// Neighbourhood used to decide whether two pixels touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// Left, right, up, down.
    Four,
    /// Also the diagonals.
    Eight,
}

/// Connected components of a mask: per-pixel labels (0 = not in the mask, regions numbered from 1
/// in raster order of their first pixel) and each region's size (`sizes[label - 1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// One label per pixel, row-major.
    pub labels: Vec<u32>,
    /// Pixel count of region `label`, at index `label - 1`.
    pub sizes: Vec<usize>,
}

/// A row-major binary mask, `data[y * width + x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMask {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` flags, row-major.
    pub data: Vec<bool>,
}

impl BinaryMask {
    /// A mask with every pixel set to `value`.
    pub fn filled(width: usize, height: usize, value: bool) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// The pixels of `g` with value ≥ `threshold`.
    pub fn from_gray(g: &GrayImage, threshold: u8) -> Self {
        Self {
            width: g.width() as usize,
            height: g.height() as usize,
            data: g.as_raw().iter().map(|&v| v >= threshold).collect(),
        }
    }

    /// 255 for set pixels, 0 elsewhere.
    pub fn to_gray(&self) -> GrayImage {
        GrayImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            Luma([if self.data[y as usize * self.width + x as usize] {
                255
            } else {
                0
            }])
        })
    }

    /// Number of set pixels.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    /// Set pixels over all pixels (0 for an empty image).
    pub fn fraction(&self) -> f64 {
        if self.data.is_empty() {
            0.0
        } else {
            self.count() as f64 / self.data.len() as f64
        }
    }

    /// Connected components of the set pixels.
    pub fn components(&self, conn: Connectivity) -> Components {
        label(&self.data, self.width, self.height, conn)
    }

    /// Keeps the connected regions whose size satisfies `keep(size)`; returns how many pixels
    /// were cleared.
    pub fn retain_components(
        &mut self,
        conn: Connectivity,
        mut keep: impl FnMut(usize) -> bool,
    ) -> usize {
        let c = self.components(conn);
        let kept: Vec<bool> = c.sizes.iter().map(|&s| keep(s)).collect();
        let mut cleared = 0;
        for (v, &l) in self.data.iter_mut().zip(&c.labels) {
            if l != 0 && !kept[l as usize - 1] {
                *v = false;
                cleared += 1;
            }
        }
        cleared
    }

    /// Clears 8-connected regions smaller than `min_size` pixels; returns the pixels cleared.
    pub fn remove_small(&mut self, min_size: usize) -> usize {
        self.retain_components(Connectivity::Eight, |s| s >= min_size)
    }

    /// Clears every region that does not touch the image border; returns the pixels cleared.
    pub fn keep_border_connected(&mut self, conn: Connectivity) -> usize {
        let c = self.components(conn);
        let touches = self.border_regions(&c);
        let mut cleared = 0;
        for (v, &l) in self.data.iter_mut().zip(&c.labels) {
            if l != 0 && !touches[l as usize - 1] {
                *v = false;
                cleared += 1;
            }
        }
        cleared
    }

    /// Sets every unset region that does not touch the image border (a hole). Holes are
    /// 4-connected, the dual of 8-connected objects, so a diagonal gap in an outline does not let
    /// the outside leak in.
    pub fn fill_holes(&mut self) {
        let mut outside = self.inverted();
        outside.keep_border_connected(Connectivity::Four);
        *self = outside.inverted();
    }

    /// Every pixel within `radius` (Chebyshev distance, a square window) of a set pixel.
    pub fn dilated(&self, radius: usize) -> Self {
        let as_map = ScalarMap {
            width: self.width,
            height: self.height,
            data: self.data.iter().map(|&v| v as u8 as f32).collect(),
        };
        as_map.max_filter(radius).above(0.5)
    }

    /// The complement.
    pub fn inverted(&self) -> Self {
        Self {
            width: self.width,
            height: self.height,
            data: self.data.iter().map(|&v| !v).collect(),
        }
    }

    /// For each region of `c` (index `label - 1`), whether it has a pixel on the image border.
    fn border_regions(&self, c: &Components) -> Vec<bool> {
        let mut touches = vec![false; c.sizes.len()];
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 {
            return touches;
        }
        let mut mark = |x: usize, y: usize| {
            let l = c.labels[y * w + x];
            if l != 0 {
                touches[l as usize - 1] = true;
            }
        };
        for x in 0..w {
            mark(x, 0);
            mark(x, h - 1);
        }
        for y in 0..h {
            mark(0, y);
            mark(w - 1, y);
        }
        touches
    }

    /// Intersection over union with a mask of the same size; 1 when both are empty, `None` when
    /// the sizes differ.
    pub fn iou(&self, other: &BinaryMask) -> Option<f64> {
        if (self.width, self.height) != (other.width, other.height) {
            return None;
        }
        let (mut inter, mut union) = (0usize, 0usize);
        for (&a, &b) in self.data.iter().zip(&other.data) {
            inter += (a && b) as usize;
            union += (a || b) as usize;
        }
        Some(if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        })
    }

    /// Bounding box of the set pixels as `(x0, y0, x1, y1)`, ends exclusive; `None` when empty.
    pub fn bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let mut b: Option<(usize, usize, usize, usize)> = None;
        for (i, &v) in self.data.iter().enumerate() {
            if v {
                let (x, y) = (i % self.width, i / self.width);
                b = Some(match b {
                    None => (x, y, x + 1, y + 1),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
                });
            }
        }
        b
    }
}

/// Connected components of a row-major `width × height` mask: labels numbered from 1 in raster
/// order of each region's first pixel (0 = unset). Flood fill with an explicit stack (no
/// recursion, so large regions are safe). The one labelling of the crate (AU-PRO uses it too).
pub fn label(mask: &[bool], width: usize, height: usize, conn: Connectivity) -> Components {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        sizes.push(0usize);
        let id = sizes.len() as u32;
        labels[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            sizes[id as usize - 1] += 1;
            let (y, x) = (i / width, i % width);
            for ny in y.saturating_sub(1)..(y + 2).min(height) {
                for nx in x.saturating_sub(1)..(x + 2).min(width) {
                    let diagonal = nx != x && ny != y;
                    if diagonal && conn == Connectivity::Four {
                        continue;
                    }
                    let j = ny * width + nx;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
    }
    Components { labels, sizes }
}
