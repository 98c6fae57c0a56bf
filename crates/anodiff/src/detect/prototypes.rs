//! Prototypes from the k normal shots and the nearest-prototype distance of test patches
//! (METHODS.md B.4, prototype-guided masks; also the PatchCore-style baseline). The prototypes are
//! every patch feature of the shots (a memory bank; at few-shot sizes there is nothing to
//! compress). Distances are Euclidean, computed as `|q|² + |p|² − 2 q·p` in one matrix product and
//! clamped at 0.

use crate::error::{Error, Result};
use candle_core::{Tensor, D};

/// Patch features of the normal shots, one row per patch.
pub struct PrototypeBank {
    /// `[P, C]` prototypes.
    bank: Tensor,
    /// `[P]` squared norms.
    sq: Tensor,
}

/// `[N, C, h, w]` → `[N·h·w, C]` (patches row by row, image after image).
pub fn patches(features: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    Ok(features
        .permute((0, 2, 3, 1))?
        .reshape((n * h * w, c))?
        .contiguous()?)
}

impl PrototypeBank {
    /// Every patch of `features: [k, C, h, w]` (the shots) is a prototype.
    pub fn new(features: &Tensor) -> Result<Self> {
        let bank = patches(features)?;
        if bank.dim(0)? == 0 {
            return Err(Error::invalid("no shot features to build prototypes from"));
        }
        let sq = bank.sqr()?.sum(D::Minus1)?;
        Ok(Self { bank, sq })
    }

    /// Number of prototypes.
    pub fn len(&self) -> usize {
        self.bank.dim(0).unwrap_or(0)
    }

    /// Whether the bank is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distance of each query row (`[M, C]`) to its nearest prototype, `[M]`.
    pub fn nearest(&self, queries: &Tensor) -> Result<Vec<f32>> {
        let qsq = queries.sqr()?.sum_keepdim(D::Minus1)?;
        let dots = queries.matmul(&self.bank.t()?)?;
        let d2 = (qsq.broadcast_add(&self.sq.unsqueeze(0)?)? - (dots * 2.0)?)?;
        let min = d2.min(D::Minus1)?.clamp(0f32, f32::MAX)?.sqrt()?;
        Ok(min.to_vec1::<f32>()?)
    }

    /// Nearest-prototype distance map of each image of `features: [N, C, h, w]`: `N` maps of
    /// `h·w` values.
    pub fn deviation_maps(&self, features: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (n, _, h, w) = features.dims4()?;
        let d = self.nearest(&patches(features)?)?;
        Ok(d.chunks(h * w).take(n).map(<[f32]>::to_vec).collect())
    }
}

/// How unusual a normal patch looks to the other normal patches: for each patch of each shot
/// (`[k, C, h, w]`), the distance to its nearest patch among all shots' patches except those within
/// `exclude` patches of itself in the same shot. With one shot this is the only normal
/// variation there is to calibrate a threshold on.
pub fn self_distances(features: &Tensor, exclude: usize) -> Result<Vec<f32>> {
    let (k, c, h, w) = features.dims4()?;
    let p = patches(features)?;
    let rows: Vec<Vec<f32>> = p.to_vec2()?;
    let mut out = Vec::with_capacity(rows.len());
    let near = |a: usize, b: usize| {
        let (ia, ib) = (a / (h * w), b / (h * w));
        let (ya, xa) = ((a % (h * w)) / w, a % w);
        let (yb, xb) = ((b % (h * w)) / w, b % w);
        ia == ib && ya.abs_diff(yb) <= exclude && xa.abs_diff(xb) <= exclude
    };
    for (a, ra) in rows.iter().enumerate() {
        let mut best = f32::INFINITY;
        for (b, rb) in rows.iter().enumerate() {
            if near(a, b) {
                continue;
            }
            let d: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
            best = best.min(d);
        }
        out.push(best.sqrt());
    }
    let _ = (k, c);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn brute(queries: &[Vec<f32>], bank: &[Vec<f32>]) -> Vec<f32> {
        queries
            .iter()
            .map(|q| {
                bank.iter()
                    .map(|p| q.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum::<f32>())
                    .fold(f32::INFINITY, f32::min)
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn nearest_prototype_matches_brute_force() {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (k, c, h, w) = (2, 7, 5, 4);
        let shots: Vec<f32> = (0..k * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let shots = Tensor::from_vec(shots, (k, c, h, w), &dev).unwrap();
        let bank = PrototypeBank::new(&shots).unwrap();
        assert_eq!(bank.len(), k * h * w);
        let test: Vec<f32> = (0..3 * c * h * w)
            .map(|_| rng.random_range(-1.5..1.5))
            .collect();
        let test = Tensor::from_vec(test, (3, c, h, w), &dev).unwrap();
        let maps = bank.deviation_maps(&test).unwrap();
        let want = brute(
            &patches(&test).unwrap().to_vec2().unwrap(),
            &patches(&shots).unwrap().to_vec2().unwrap(),
        );
        let got: Vec<f32> = maps.concat();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        // A shot's own patches are at distance 0 (up to rounding).
        let own = bank.deviation_maps(&shots).unwrap().concat();
        assert!(own.iter().all(|&d| d < 1e-3), "{own:?}");
    }

    #[test]
    fn self_distances_skip_the_neighbourhood() {
        let dev = Device::Cpu;
        // One shot, one channel, a ramp: the nearest patch outside a radius-1 neighbourhood of
        // patch x is 2 steps away.
        let f = Tensor::from_vec(
            (0..8).map(|v| v as f32).collect::<Vec<_>>(),
            (1, 1, 1, 8),
            &dev,
        )
        .unwrap();
        let d = self_distances(&f, 1).unwrap();
        assert!(d.iter().all(|&v| (v - 2.0).abs() < 1e-6), "{d:?}");
        let d0 = self_distances(&f, 0).unwrap();
        assert!(d0.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{d0:?}");
    }
}
