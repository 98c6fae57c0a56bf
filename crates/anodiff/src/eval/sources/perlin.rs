//! 2-D gradient (Perlin) noise and the DRAEM-style anomaly mask thresholded from it.

use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::Rng;

/// Quintic fade curve: zero first and second derivatives at the lattice points.
fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Gradient noise over a `w`×`h` grid with `res.0`×`res.1` lattice cells across the image, the
/// pattern rotated by `angle_deg` about the centre. Values lie in about [-1, 1] (scaled by √2, as
/// DRAEM does). The noise is evaluated at rotated coordinates, so unlike rotating a noise image
/// there are no empty corners.
pub fn perlin_noise(w: u32, h: u32, res: (u32, u32), angle_deg: f32, rng: &mut StdRng) -> Vec<f32> {
    let (rx, ry) = (res.0.max(1) as f32, res.1.max(1) as f32);
    // Rotated normalised coordinates stay within ±√2/2 < 0.75, so a lattice spanning
    // [-0.75, 0.75] of the image in each axis covers every pixel.
    let lx = (1.5 * rx).ceil() as usize + 2;
    let ly = (1.5 * ry).ceil() as usize + 2;
    let grads: Vec<(f32, f32)> = (0..lx * ly)
        .map(|_| {
            let a = rng.random::<f32>() * std::f32::consts::TAU;
            (a.cos(), a.sin())
        })
        .collect();
    let (sn, cs) = angle_deg.to_radians().sin_cos();
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let u = (x as f32 + 0.5) / w as f32 - 0.5;
            let v = (y as f32 + 0.5) / h as f32 - 0.5;
            let px = (cs * u - sn * v + 0.75) * rx;
            let py = (sn * u + cs * v + 0.75) * ry;
            let ix = (px.floor().max(0.0) as usize).min(lx - 2);
            let iy = (py.floor().max(0.0) as usize).min(ly - 2);
            let (fx, fy) = (px - ix as f32, py - iy as f32);
            let dot = |i: usize, j: usize| {
                let (gx, gy) = grads[(iy + j) * lx + ix + i];
                gx * (fx - i as f32) + gy * (fy - j as f32)
            };
            let (sx, sy) = (fade(fx), fade(fy));
            let n = lerp(
                lerp(dot(0, 0), dot(1, 0), sx),
                lerp(dot(0, 1), dot(1, 1), sx),
                sy,
            );
            out.push(std::f32::consts::SQRT_2 * n);
        }
    }
    out
}

/// DRAEM's anomaly mask: noise with 2^k lattice cells per axis (k uniform in 0..6, drawn per axis),
/// rotated by a uniform angle in [-90°, 90°), thresholded at 0.5 into 0/255.
pub fn perlin_mask(size: u32, rng: &mut StdRng) -> GrayImage {
    let kx = rng.random_range(0..6u32);
    let ky = rng.random_range(0..6u32);
    let angle = rng.random_range(-90.0f32..90.0);
    let noise = perlin_noise(size, size, (1 << kx, 1 << ky), angle, rng);
    GrayImage::from_fn(size, size, |x, y| {
        Luma([if noise[(y * size + x) as usize] > 0.5 {
            255
        } else {
            0
        }])
    })
}
