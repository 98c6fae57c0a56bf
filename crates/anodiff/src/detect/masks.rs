//! Inpainting masks: the k × k grid cells inference repaints one at a time (METHODS.md B.4), and
//! the random training masks drawn inside the object's foreground (B.3).
//!
//! Training masks are of three kinds — a grid cell of one of the inference scales, an axis-aligned
//! rectangle, an elliptic blob — whose *position* is drawn inside the foreground: a cell is chosen
//! among those at least a quarter covered by the object, a rectangle or blob is centred on a
//! foreground pixel. The shape itself is not clipped to the object, because inference masks whole
//! grid cells, borders included; what the restriction buys is that the model learns to repaint
//! object parts rather than empty background (on a small object most random cells would be
//! background). Textures, whose foreground is the whole image, draw anywhere.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::Rng;

/// One cell of a k × k grid over an `h × w` image, in pixels (`y0..y1`, `x0..x1`). Cells tile the
/// image exactly: cell `i` spans `i·h/k .. (i+1)·h/k`, so sides differ by at most one pixel when
/// `k` does not divide the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// First row.
    pub y0: usize,
    /// One past the last row.
    pub y1: usize,
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
}

impl Cell {
    /// Whether pixel (y, x) lies in the cell.
    pub fn contains(&self, y: usize, x: usize) -> bool {
        (self.y0..self.y1).contains(&y) && (self.x0..self.x1).contains(&x)
    }
}

/// The k² cells of a k × k grid over `h × w`, row by row. Errors if `k` is 0 or exceeds a side.
pub fn grid_cells(k: usize, h: usize, w: usize) -> Result<Vec<Cell>> {
    if k == 0 || k > h || k > w {
        return Err(Error::invalid(format!(
            "grid scale {k} does not fit a {w}x{h} image (1 ≤ k ≤ side)"
        )));
    }
    let mut cells = Vec::with_capacity(k * k);
    for r in 0..k {
        for c in 0..k {
            cells.push(Cell {
                y0: r * h / k,
                y1: (r + 1) * h / k,
                x0: c * w / k,
                x1: (c + 1) * w / k,
            });
        }
    }
    Ok(cells)
}

/// A binary `h × w` mask (1 inside) of one cell, row-major.
pub fn cell_mask(cell: &Cell, h: usize, w: usize) -> Vec<f32> {
    let mut m = vec![0f32; h * w];
    for y in cell.y0..cell.y1 {
        m[y * w + cell.x0..y * w + cell.x1].fill(1.0);
    }
    m
}

/// The masks of every cell of every scale, stacked `[Σk², 1, h, w]` in the order of `scales`, each
/// scale row by row: the batch one image's multi-scale inpainting runs.
pub fn grid_masks(scales: &[usize], h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::new();
    let mut n = 0;
    for &k in scales {
        for cell in grid_cells(k, h, w)? {
            data.extend(cell_mask(&cell, h, w));
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::invalid("no grid scales given"));
    }
    Ok(Tensor::from_vec(data, (n, 1, h, w), device)?)
}

/// Mix of training-mask kinds; the blob share is what the other two leave.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainMaskOptions {
    /// Grid scales to draw cells from (the inference scales).
    pub scales: Vec<usize>,
    /// Probability of a grid cell.
    pub p_cell: f64,
    /// Probability of a rectangle.
    pub p_rect: f64,
    /// A cell is eligible when at least this share of it is foreground.
    pub min_cell_foreground: f64,
}

impl Default for TrainMaskOptions {
    fn default() -> Self {
        Self {
            scales: vec![2, 4, 8],
            p_cell: 0.5,
            p_rect: 0.25,
            min_cell_foreground: 0.25,
        }
    }
}

/// One random training mask `h × w` (row-major, 1 = repaint) whose position lies in `foreground`
/// (`h·w` flags; an all-false foreground counts as all-true).
pub fn sample_train_mask(
    o: &TrainMaskOptions,
    foreground: &[bool],
    h: usize,
    w: usize,
    rng: &mut impl Rng,
) -> Result<Vec<f32>> {
    if foreground.len() != h * w {
        return Err(Error::invalid(format!(
            "foreground has {} pixels, the image {w}x{h}",
            foreground.len()
        )));
    }
    let any_fg = foreground.iter().any(|&f| f);
    let fg = |y: usize, x: usize| !any_fg || foreground[y * w + x];
    let u: f64 = rng.random();
    if u < o.p_cell && !o.scales.is_empty() {
        let k = o.scales[rng.random_range(0..o.scales.len())];
        let cells = grid_cells(k, h, w)?;
        let cover = |c: &Cell| {
            let mut n = 0usize;
            for y in c.y0..c.y1 {
                for x in c.x0..c.x1 {
                    n += usize::from(fg(y, x));
                }
            }
            n as f64 / ((c.y1 - c.y0) * (c.x1 - c.x0)) as f64
        };
        let covers: Vec<f64> = cells.iter().map(cover).collect();
        let mut eligible: Vec<usize> = (0..cells.len())
            .filter(|&i| covers[i] >= o.min_cell_foreground)
            .collect();
        if eligible.is_empty() {
            // A tiny object: the cells that hold most of it.
            let best = covers.iter().cloned().fold(0f64, f64::max);
            eligible = (0..cells.len()).filter(|&i| covers[i] >= best).collect();
        }
        let cell = cells[eligible[rng.random_range(0..eligible.len())]];
        return Ok(cell_mask(&cell, h, w));
    }
    // A centre on the foreground.
    let fg_pixels: Vec<usize> = (0..h * w).filter(|&i| fg(i / w, i % w)).collect();
    let centre = fg_pixels[rng.random_range(0..fg_pixels.len())];
    let (cy, cx) = ((centre / w) as f64 + 0.5, (centre % w) as f64 + 0.5);
    let side = h.min(w) as f64;
    let mut m = vec![0f32; h * w];
    if u < o.p_cell + o.p_rect {
        let hh = rng.random_range(side / 32.0..side / 4.0).max(1.0);
        let hw = rng.random_range(side / 32.0..side / 4.0).max(1.0);
        for (i, v) in m.iter_mut().enumerate() {
            let (y, x) = ((i / w) as f64 + 0.5, (i % w) as f64 + 0.5);
            if (y - cy).abs() <= hh && (x - cx).abs() <= hw {
                *v = 1.0;
            }
        }
    } else {
        let a = rng.random_range(side / 32.0..side / 4.0).max(1.0);
        let b = rng.random_range(side / 32.0..side / 4.0).max(1.0);
        let th: f64 = rng.random_range(0.0..std::f64::consts::PI);
        for (i, v) in m.iter_mut().enumerate() {
            let (dy, dx) = ((i / w) as f64 + 0.5 - cy, (i % w) as f64 + 0.5 - cx);
            let p = dx * th.cos() + dy * th.sin();
            let q = -dx * th.sin() + dy * th.cos();
            if (p / a).powi(2) + (q / b).powi(2) <= 1.0 {
                *v = 1.0;
            }
        }
    }
    // The centre pixel is always inside, so the mask is never empty.
    m[centre] = 1.0;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grid_cells_tile_the_image_exactly_once() {
        for (k, h, w) in [(1, 8, 8), (2, 64, 64), (3, 64, 48), (8, 64, 64), (5, 7, 9)] {
            let cells = grid_cells(k, h, w).unwrap();
            assert_eq!(cells.len(), k * k);
            for y in 0..h {
                for x in 0..w {
                    let n = cells.iter().filter(|c| c.contains(y, x)).count();
                    assert_eq!(n, 1, "k={k} pixel ({y},{x}) in {n} cells");
                }
            }
        }
        assert!(grid_cells(0, 8, 8).is_err());
        assert!(grid_cells(9, 8, 8).is_err());
    }

    #[test]
    fn grid_masks_stack_scales_in_order() {
        let m = grid_masks(&[1, 2], 4, 4, &Device::Cpu).unwrap();
        assert_eq!(m.dims(), &[5, 1, 4, 4]);
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v[..16].iter().all(|&x| x == 1.0));
        // Scale 2, cell (0, 1): the top-right 2×2 block.
        let c = &v[32..48];
        let want = [
            0., 0., 1., 1., 0., 0., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0.,
        ];
        assert_eq!(c, &want);
        // The cells of one scale sum to the all-ones image.
        let sum: f32 = v[16..].iter().sum();
        assert_eq!(sum, 16.0);
    }

    #[test]
    fn training_masks_sit_on_the_foreground() {
        let (h, w) = (32, 32);
        // Object: the top-left 8×8 block.
        let fg: Vec<bool> = (0..h * w).map(|i| i / w < 8 && i % w < 8).collect();
        let o = TrainMaskOptions::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut kinds_seen = 0;
        for _ in 0..200 {
            let m = sample_train_mask(&o, &fg, h, w, &mut rng).unwrap();
            let on_fg = m.iter().zip(&fg).filter(|(&v, &f)| v > 0.0 && f).count();
            assert!(on_fg > 0, "mask misses the object");
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
            kinds_seen += usize::from(m.iter().sum::<f32>() > 0.0);
        }
        assert_eq!(kinds_seen, 200);
        // Without a foreground anywhere is allowed: masks spread over the whole image.
        let none = vec![false; h * w];
        let mut hits = vec![0usize; h * w];
        for _ in 0..300 {
            let m = sample_train_mask(&o, &none, h, w, &mut rng).unwrap();
            for (c, v) in hits.iter_mut().zip(&m) {
                *c += usize::from(*v > 0.0);
            }
        }
        assert!(hits[(h - 1) * w + w - 1] > 0 && hits[0] > 0);
        assert!(sample_train_mask(&o, &fg[..10], h, w, &mut rng).is_err());
    }
}
