//! IC-LPIPS, the intra-cluster diversity of generated images that DualAnoDiff reports (Ojha et
//! al. 2021, "Few-shot Image Generation via Cross-domain Correspondence"): every generated image
//! joins the cluster of the training image it is LPIPS-nearest to; within each cluster the mean
//! LPIPS over all pairs of its generated members measures how far the generator strays from
//! copying that training image; IC-LPIPS is the mean over clusters. Higher = more diverse; 0 for a
//! generator that reproduces its training images. Clusters with fewer than two members have no
//! pair and are left out (the count of clusters used is returned beside the value).
//!
//! It needs LPIPS with real backbone weights ([`Lpips`], supplied by the user); nothing here
//! substitutes another distance under this name.

use super::lpips::Lpips;
use crate::error::{Error, Result};
use crate::io::image_tensor::rgb_to_tensor;
use candle_core::{Device, Tensor};
use image::RgbImage;

/// An IC-LPIPS value with how it was formed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct IcLpips {
    /// Mean over the clusters used of their mean pairwise LPIPS.
    pub value: f32,
    /// Clusters with at least two members (the ones averaged).
    pub clusters_used: usize,
    /// Clusters (training images).
    pub clusters: usize,
}

/// IC-LPIPS from any distance: `to_centre(g, c)` between generated image `g` and training image
/// `c`, `between(a, b)` between two generated images. `None` when no cluster has two members.
pub fn intra_cluster_diversity(
    centres: usize,
    generated: usize,
    mut to_centre: impl FnMut(usize, usize) -> Result<f32>,
    mut between: impl FnMut(usize, usize) -> Result<f32>,
) -> Result<Option<IcLpips>> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); centres];
    for g in 0..generated {
        let mut best = (f32::INFINITY, 0);
        for c in 0..centres {
            let d = to_centre(g, c)?;
            if d < best.0 {
                best = (d, c);
            }
        }
        if centres > 0 {
            members[best.1].push(g);
        }
    }
    let mut means = Vec::new();
    for m in members.iter().filter(|m| m.len() >= 2) {
        let (mut sum, mut n) = (0f64, 0usize);
        for (i, &a) in m.iter().enumerate() {
            for &b in &m[i + 1..] {
                sum += between(a, b)? as f64;
                n += 1;
            }
        }
        means.push(sum / n as f64);
    }
    Ok((!means.is_empty()).then(|| IcLpips {
        value: (means.iter().sum::<f64>() / means.len() as f64) as f32,
        clusters_used: means.len(),
        clusters: centres,
    }))
}

/// IC-LPIPS of `generated` around `training` (all images the same size, at least the net's
/// [`super::lpips::LpipsNet::min_size`]).
pub fn ic_lpips(
    net: &Lpips,
    training: &[RgbImage],
    generated: &[RgbImage],
    dev: &Device,
) -> Result<Option<IcLpips>> {
    let dims = training
        .first()
        .or(generated.first())
        .map(|i| i.dimensions());
    if let Some(d) = dims {
        if let Some(bad) = training
            .iter()
            .chain(generated)
            .find(|i| i.dimensions() != d)
        {
            return Err(Error::invalid(format!(
                "IC-LPIPS: images of different sizes ({:?} and {:?})",
                d,
                bad.dimensions()
            )));
        }
    }
    let to_t = |imgs: &[RgbImage]| -> Result<Vec<Tensor>> {
        imgs.iter().map(|i| rgb_to_tensor(i, dev)).collect()
    };
    let (t, g) = (to_t(training)?, to_t(generated)?);
    let dist = |a: &Tensor, b: &Tensor| -> Result<f32> {
        Ok(net.distance(a, b)?.flatten_all()?.to_vec1::<f32>()?[0])
    };
    intra_cluster_diversity(
        t.len(),
        g.len(),
        |gi, c| dist(&g[gi], &t[c]),
        |a, b| dist(&g[a], &g[b]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_and_pairwise_means_on_a_line() {
        // Centres at 0 and 10; generated at 1, 2, 4 (→ centre 0) and 9, 30 (→ centre 10), 50
        // (→ centre 10). Cluster 0: pairs |1−2|, |1−4|, |2−4| → mean 2; cluster 1: |9−30|,
        // |9−50|, |30−50| → mean 82/3.
        let c = [0.0f32, 10.0];
        let g = [1.0f32, 2.0, 4.0, 9.0, 30.0, 50.0];
        let r = intra_cluster_diversity(
            2,
            6,
            |i, k| Ok((g[i] - c[k]).abs()),
            |a, b| Ok((g[a] - g[b]).abs()),
        )
        .unwrap()
        .unwrap();
        assert!((r.value - (2.0 + 82.0 / 3.0) / 2.0).abs() < 1e-5, "{r:?}");
        assert_eq!((r.clusters_used, r.clusters), (2, 2));
        // Generated image i nearest to centre i: one member per cluster, no pair, no value.
        let lone =
            intra_cluster_diversity(2, 2, |i, k| Ok((i as f32 - k as f32).abs()), |_, _| Ok(1.0))
                .unwrap();
        assert_eq!(lone, None);
        assert_eq!(
            intra_cluster_diversity(0, 3, |_, _| Ok(0.0), |_, _| Ok(0.0)).unwrap(),
            None
        );
    }
}
