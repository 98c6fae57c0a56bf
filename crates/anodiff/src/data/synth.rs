//! A deterministic procedural defect dataset in the MVTec layout, small enough that training on it
//! takes minutes. Two categories:
//!
//! - `metal_texture`: a brushed, noisy metal surface (texture category);
//! - `capsule`: a two-coloured pill on a dark background (object category).
//!
//! Defects are painted onto a defect-free rendering: scratches (thin curved lines), spots (filled
//! ellipses), cracks (branching random walks) and, on the capsule, missing pieces (bites out of the
//! object that show the background). Each mask is exactly the set of pixels the defect changed:
//! painting never leaves a masked pixel unchanged and never touches an unmasked one.

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::json::write_json;
use crate::seed::mix;
use image::{GrayImage, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A procedural category (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Category {
    /// Brushed, noisy metal surface (texture category).
    MetalTexture,
    /// Two-coloured pill on a dark background (object category).
    Capsule,
}

impl Category {
    /// Every category, in the order they are written.
    pub const ALL: [Category; 2] = [Category::MetalTexture, Category::Capsule];

    /// Folder name of the category.
    pub fn name(self) -> &'static str {
        match self {
            Category::MetalTexture => "metal_texture",
            Category::Capsule => "capsule",
        }
    }

    /// The defect types painted on this category.
    pub fn defects(self) -> &'static [DefectKind] {
        match self {
            Category::MetalTexture => &[DefectKind::Scratch, DefectKind::Spot, DefectKind::Crack],
            Category::Capsule => &[
                DefectKind::Scratch,
                DefectKind::Spot,
                DefectKind::Crack,
                DefectKind::Missing,
            ],
        }
    }
}

/// A procedural defect type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DefectKind {
    /// Thin curved line.
    Scratch,
    /// Filled ellipse.
    Spot,
    /// Branching random walk.
    Crack,
    /// A bite out of the object showing the background (capsule only).
    Missing,
}

impl DefectKind {
    /// Folder name of the defect type under `test/`.
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Spot => "spot",
            DefectKind::Crack => "crack",
            DefectKind::Missing => "missing",
        }
    }
}

/// Size and image counts of a synthetic dataset, per category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynthOptions {
    /// Square image side in pixels (>= 32).
    pub size: u32,
    /// Defect-free training images.
    pub train_good: usize,
    /// Defect-free test images.
    pub test_good: usize,
    /// Test images per defect type.
    pub per_defect: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            size: 128,
            train_good: 40,
            test_good: 10,
            per_defect: 8,
        }
    }
}

/// A rendered defective sample with the defect-free image it was painted on.
pub struct SynthSample {
    /// The defect-free rendering.
    pub good: RgbImage,
    /// The same rendering with the defect painted on.
    pub image: RgbImage,
    /// 255 exactly where `image` differs from `good`.
    pub mask: GrayImage,
}

/// What `synth_dataset` wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    /// One MVTec-layout folder per category.
    pub categories: Vec<PathBuf>,
    /// Number of files written.
    pub files: usize,
}

/// A defect-free rendering: the image, which pixels are object (all for textures) and the
/// background alone (what a missing piece reveals).
struct Scene {
    img: RgbImage,
    object: Vec<bool>,
    background: RgbImage,
}

/// Independent per-sample seeds from (seed, ids).
fn sample_seed(seed: u64, cat: Category, group: u64, index: usize) -> u64 {
    mix(mix(mix(seed) ^ cat as u64) ^ group).wrapping_add(mix(index as u64))
}

fn clamp_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn render_metal(size: u32, rng: &mut impl Rng) -> Scene {
    let n = size as usize;
    let base = rng.random_range(110.0..150.0f32);
    let tint = [
        rng.random_range(-6.0..6.0f32),
        rng.random_range(-6.0..6.0f32),
        rng.random_range(0.0..10.0f32),
    ];
    let (gx, gy) = (
        rng.random_range(-15.0..15.0f32),
        rng.random_range(-15.0..15.0f32),
    );
    let wave_k = rng.random_range(0.5..2.0f32);
    let wave_ph = rng.random_range(0.0..std::f32::consts::TAU);
    // Brushing: per-row offsets plus noise smoothed along x (long streaks).
    let mut row = vec![0f32; n];
    for r in row.iter_mut() {
        *r = rng.random_range(-8.0..8.0f32);
    }
    let mut streak = vec![0f32; n * n];
    for y in 0..n {
        let mut s = rng.random_range(-10.0..10.0f32);
        for x in 0..n {
            s = 0.92 * s + 0.08 * rng.random_range(-30.0..30.0f32);
            streak[y * n + x] = s;
        }
    }
    let img = RgbImage::from_fn(size, size, |x, y| {
        let (xf, yf) = (x as f32 / size as f32, y as f32 / size as f32);
        let wave = 5.0 * (std::f32::consts::TAU * (xf * wave_k) + wave_ph).sin();
        let v =
            base + row[y as usize] + streak[y as usize * n + x as usize] + wave + gx * xf + gy * yf;
        let noise = rng.random_range(-4.0..4.0f32);
        Rgb(std::array::from_fn(|c| clamp_u8(v + tint[c] + noise)))
    });
    let background = img.clone();
    Scene {
        img,
        object: vec![true; n * n],
        background,
    }
}

fn render_capsule(size: u32, rng: &mut impl Rng) -> Scene {
    let s = size as f32;
    let n = size as usize;
    let bg_level = rng.random_range(35.0..55.0f32);
    let background = RgbImage::from_fn(size, size, |x, y| {
        let v = bg_level + 6.0 * (x + y) as f32 / (2.0 * s) + rng.random_range(-3.0..3.0f32);
        Rgb([clamp_u8(v), clamp_u8(v + 6.0), clamp_u8(v + 2.0)])
    });
    let cx = s / 2.0 + rng.random_range(-s / 20.0..s / 20.0);
    let cy = s / 2.0 + rng.random_range(-s / 20.0..s / 20.0);
    let half = s * rng.random_range(0.26..0.32f32);
    let radius = s * rng.random_range(0.15..0.19f32);
    let left = [
        rng.random_range(160.0..200.0f32),
        rng.random_range(40.0..70.0f32),
        rng.random_range(40.0..60.0f32),
    ];
    let right = [
        rng.random_range(215.0..235.0f32),
        rng.random_range(205.0..225.0f32),
        rng.random_range(170.0..195.0f32),
    ];
    let mut object = vec![false; n * n];
    let mut img = background.clone();
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            // Distance to the capsule's axis segment.
            let ax = px.clamp(cx - half, cx + half);
            let d = ((px - ax).powi(2) + (py - cy).powi(2)).sqrt();
            if d <= radius {
                object[y as usize * n + x as usize] = true;
                let shade = 0.7 + 0.3 * (1.0 - (d / radius).powi(2)).sqrt();
                let col = if px < cx { left } else { right };
                let noise = rng.random_range(-3.0..3.0f32);
                img.put_pixel(
                    x,
                    y,
                    Rgb(std::array::from_fn(|c| clamp_u8(col[c] * shade + noise))),
                );
            }
        }
    }
    Scene {
        img,
        object,
        background,
    }
}

fn render_scene(cat: Category, size: u32, rng: &mut impl Rng) -> Scene {
    match cat {
        Category::MetalTexture => render_metal(size, rng),
        Category::Capsule => render_capsule(size, rng),
    }
}

/// Marks pixel (x, y) if it is inside the image and on the object.
fn mark(region: &mut [bool], scene: &Scene, x: f32, y: f32) {
    let size = scene.img.width() as i64;
    let (xi, yi) = (x.floor() as i64, y.floor() as i64);
    if (0..size).contains(&xi) && (0..size).contains(&yi) {
        let i = (yi * size + xi) as usize;
        if scene.object[i] {
            region[i] = true;
        }
    }
}

/// A random object pixel (centre-ish), as float coordinates.
fn object_point(scene: &Scene, rng: &mut impl Rng) -> (f32, f32) {
    let size = scene.img.width();
    let margin = size / 8;
    for _ in 0..1000 {
        let x = rng.random_range(margin..size - margin);
        let y = rng.random_range(margin..size - margin);
        if scene.object[(y * size + x) as usize] {
            return (x as f32 + 0.5, y as f32 + 0.5);
        }
    }
    (size as f32 / 2.0, size as f32 / 2.0)
}

fn scratch_region(scene: &Scene, rng: &mut impl Rng) -> Vec<bool> {
    let s = scene.img.width() as f32;
    let mut region = vec![false; scene.object.len()];
    let (mut x, mut y) = object_point(scene, rng);
    let mut ang = rng.random_range(0.0..std::f32::consts::TAU);
    let bend = rng.random_range(-0.02..0.02f32);
    let len = s * rng.random_range(0.25..0.55f32);
    let thick = s >= 96.0 && rng.random_bool(0.5);
    let mut t = 0.0;
    while t < len {
        mark(&mut region, scene, x, y);
        if thick {
            mark(&mut region, scene, x + ang.sin().abs(), y + ang.cos().abs());
        }
        x += 0.5 * ang.cos();
        y += 0.5 * ang.sin();
        ang += bend;
        t += 0.5;
    }
    region
}

fn spot_region(scene: &Scene, rng: &mut impl Rng) -> Vec<bool> {
    let s = scene.img.width() as f32;
    let mut region = vec![false; scene.object.len()];
    let (cx, cy) = object_point(scene, rng);
    let rx = rng.random_range(2.0..(s / 12.0).max(3.0));
    let ry = rng.random_range(2.0..(s / 12.0).max(3.0));
    let n = s as i64;
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = ((x as f32 + 0.5 - cx) / rx, (y as f32 + 0.5 - cy) / ry);
            if dx * dx + dy * dy <= 1.0 {
                mark(&mut region, scene, x as f32 + 0.5, y as f32 + 0.5);
            }
        }
    }
    region
}

fn crack_region(scene: &Scene, rng: &mut impl Rng) -> Vec<bool> {
    let s = scene.img.width() as f32;
    let mut region = vec![false; scene.object.len()];
    let start = object_point(scene, rng);
    let steps = (s * rng.random_range(0.4..0.9f32)) as usize;
    let mut walks = vec![(start, rng.random_range(0.0..std::f32::consts::TAU), steps)];
    while let Some(((mut x, mut y), mut ang, n)) = walks.pop() {
        for _ in 0..n {
            mark(&mut region, scene, x, y);
            ang += rng.random_range(-0.6..0.6f32);
            x += ang.cos();
            y += ang.sin();
            // Occasional short side branch.
            if walks.len() < 4 && rng.random_bool(0.04) {
                let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                walks.push(((x, y), ang + side * 0.9, n / 4));
            }
        }
    }
    region
}

/// A bite out of the object edge (capsule only).
fn missing_region(scene: &Scene, rng: &mut impl Rng) -> Vec<bool> {
    let size = scene.img.width();
    let s = size as f32;
    let mut region = vec![false; scene.object.len()];
    // An object pixel with a background 4-neighbour is on the edge.
    let edge: Vec<(u32, u32)> = (1..size - 1)
        .flat_map(|y| (1..size - 1).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let i = |x: u32, y: u32| scene.object[(y * size + x) as usize];
            i(x, y) && !(i(x - 1, y) && i(x + 1, y) && i(x, y - 1) && i(x, y + 1))
        })
        .collect();
    if edge.is_empty() {
        return region;
    }
    let (ex, ey) = edge[rng.random_range(0..edge.len())];
    let r = s * rng.random_range(0.06..0.11f32);
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 - ex as f32, y as f32 - ey as f32);
            if dx * dx + dy * dy <= r * r {
                mark(&mut region, scene, x as f32 + 0.5, y as f32 + 0.5);
            }
        }
    }
    region
}

/// Paints `region` with `color(x, y, old)`; a pixel the colour would leave unchanged is nudged by
/// one level so that the mask is exactly the set of changed pixels.
fn paint(img: &mut RgbImage, region: &[bool], mut color: impl FnMut(u32, u32, [u8; 3]) -> [u8; 3]) {
    let w = img.width();
    for (i, _) in region.iter().enumerate().filter(|(_, &r)| r) {
        let (x, y) = (i as u32 % w, i as u32 / w);
        let old = img.get_pixel(x, y).0;
        let mut new = color(x, y, old);
        if new == old {
            new[0] = if old[0] < 255 { old[0] + 1 } else { 254 };
        }
        img.put_pixel(x, y, Rgb(new));
    }
}

/// Renders a defect-free image.
pub fn render_good(cat: Category, size: u32, seed: u64) -> RgbImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    render_scene(cat, size, &mut rng).img
}

/// Renders a defect-free image (the same one [`render_good`] returns for `seed`) with its exact
/// object mask: 255 on the object, 0 on the background (all 255 for a texture category).
pub fn render_good_with_object(cat: Category, size: u32, seed: u64) -> (RgbImage, GrayImage) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scene = render_scene(cat, size, &mut rng);
    let object = GrayImage::from_fn(size, size, |x, y| {
        image::Luma([if scene.object[(y * size + x) as usize] {
            255
        } else {
            0
        }])
    });
    (scene.img, object)
}

/// Renders a defective image, the defect-free image beneath it and the exact mask.
pub fn render_defect(cat: Category, kind: DefectKind, size: u32, seed: u64) -> SynthSample {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scene = render_scene(cat, size, &mut rng);
    let min_pixels = (size as usize / 10).max(6);
    let mut region = Vec::new();
    for _ in 0..50 {
        region = match kind {
            DefectKind::Scratch => scratch_region(&scene, &mut rng),
            DefectKind::Spot => spot_region(&scene, &mut rng),
            DefectKind::Crack => crack_region(&scene, &mut rng),
            DefectKind::Missing => missing_region(&scene, &mut rng),
        };
        if region.iter().filter(|&&r| r).count() >= min_pixels {
            break;
        }
    }
    let mut image = scene.img.clone();
    let metal = cat == Category::MetalTexture;
    match kind {
        DefectKind::Scratch => {
            // Bright on metal, dark on the pill.
            paint(&mut image, &region, |_, _, o| {
                o.map(|v| {
                    if metal {
                        clamp_u8(v as f32 + 70.0)
                    } else {
                        clamp_u8(v as f32 * 0.45)
                    }
                })
            })
        }
        DefectKind::Spot => {
            let base = [
                rng.random_range(50.0..80.0f32),
                rng.random_range(35.0..55.0f32),
                rng.random_range(20.0..40.0f32),
            ];
            let mut r2 = rand::rngs::StdRng::seed_from_u64(mix(seed));
            paint(&mut image, &region, |_, _, _| {
                let n = r2.random_range(-6.0..6.0f32);
                base.map(|b| clamp_u8(b + n))
            })
        }
        DefectKind::Crack => paint(&mut image, &region, |_, _, o| {
            o.map(|v| clamp_u8(v as f32 * 0.3))
        }),
        DefectKind::Missing => paint(&mut image, &region, |x, y, _| {
            scene.background.get_pixel(x, y).0
        }),
    }
    let mask = GrayImage::from_fn(size, size, |x, y| {
        image::Luma([if region[(y * size + x) as usize] {
            255
        } else {
            0
        }])
    });
    SynthSample {
        good: scene.img,
        image,
        mask,
    }
}

fn encode_png(path: &Path, img: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    Ok(buf.into_inner())
}

/// Name of the marker file `synth_dataset` writes (and requires before replacing a folder).
pub const MARKER: &str = "synth.json";

/// Writes the dataset to `out_dir/<category>/...`. See [`synth_dataset_with_progress`].
pub fn synth_dataset(out_dir: &Path, seed: u64, opts: &SynthOptions) -> Result<SynthSummary> {
    synth_dataset_with_progress(out_dir, seed, opts, &mut |_, _| {})
}

/// Writes the dataset into a temporary sibling folder, then renames it to `out_dir`, so a crash
/// never leaves a half-written dataset. An existing `out_dir` is replaced only if it is empty or
/// was written by this function (has `synth.json`). `progress(done, total)` is called per file.
pub fn synth_dataset_with_progress(
    out_dir: &Path,
    seed: u64,
    opts: &SynthOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SynthSummary> {
    if opts.size < 32 {
        return Err(Error::invalid(format!(
            "synth dataset: size {} too small (>= 32)",
            opts.size
        )));
    }
    if out_dir.exists() {
        let empty = std::fs::read_dir(out_dir)
            .map_err(|e| Error::io(out_dir, e))?
            .next()
            .is_none();
        if !empty && !out_dir.join(MARKER).is_file() {
            return Err(Error::invalid(format!(
                "{}: exists and was not written by synth-dataset (no {MARKER}); refusing to replace it",
                out_dir.display()
            )));
        }
    }
    let name = out_dir
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a folder path", out_dir.display())))?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let result = write_all(&tmp, seed, opts, progress);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    }
    std::fs::rename(&tmp, out_dir).map_err(|e| Error::io(out_dir, e))?;
    let files = result?;
    Ok(SynthSummary {
        categories: Category::ALL
            .iter()
            .map(|c| out_dir.join(c.name()))
            .collect(),
        files,
    })
}

fn write_all(
    root: &Path,
    seed: u64,
    opts: &SynthOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    let per_cat =
        |c: Category| opts.train_good + opts.test_good + c.defects().len() * opts.per_defect * 2;
    let total: usize = Category::ALL.iter().map(|&c| per_cat(c)).sum::<usize>() + 1;
    let mut done = 0;
    let mut put = |path: PathBuf, img: image::DynamicImage| -> Result<()> {
        let bytes = encode_png(&path, &img)?;
        write_atomic(&path, &bytes)?;
        done += 1;
        progress(done, total);
        Ok(())
    };
    let size = opts.size;
    for cat in Category::ALL {
        let dir = root.join(cat.name());
        for (group, split, count) in [(0, "train", opts.train_good), (1, "test", opts.test_good)] {
            for i in 0..count {
                let img = render_good(cat, size, sample_seed(seed, cat, group, i));
                put(
                    dir.join(split).join("good").join(format!("{i:03}.png")),
                    img.into(),
                )?;
            }
        }
        for (k, &kind) in cat.defects().iter().enumerate() {
            for i in 0..opts.per_defect {
                let s = render_defect(cat, kind, size, sample_seed(seed, cat, 10 + k as u64, i));
                put(
                    dir.join("test")
                        .join(kind.name())
                        .join(format!("{i:03}.png")),
                    s.image.into(),
                )?;
                put(
                    dir.join("ground_truth")
                        .join(kind.name())
                        .join(format!("{i:03}_mask.png")),
                    s.mask.into(),
                )?;
            }
        }
    }
    #[derive(Serialize)]
    struct Marker<'a> {
        generator: &'static str,
        seed: u64,
        options: &'a SynthOptions,
        categories: Vec<&'static str>,
    }
    let marker = Marker {
        generator: "anodiff synth-dataset v1",
        seed,
        options: opts,
        categories: Category::ALL.iter().map(|c| c.name()).collect(),
    };
    write_json(&root.join(MARKER), &marker)?;
    done += 1;
    progress(done, total);
    Ok(done)
}

/// The per-sample seed used for sample `index` of a group, exposed for tests and tools:
/// group 0 = train/good, 1 = test/good, 10 + k = the k-th defect type of the category.
pub fn seed_for(seed: u64, cat: Category, group: u64, index: usize) -> u64 {
    sample_seed(seed, cat, group, index)
}
