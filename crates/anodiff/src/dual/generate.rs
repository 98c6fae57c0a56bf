//! The `dual-generate` job (METHODS.md A.6): a trained run → many defect images with masks.
//!
//! ```text
//! DIR/image/<stem>.png   accepted whole images      (what `bench localisation --source dir:DIR` reads)
//! DIR/mask/<stem>.png    their masks (0/255)
//! DIR/part/<stem>.png    their anomaly parts
//! DIR/rejected/{image,part,mask}/<stem>.png   failed pairs, kept apart, never silently dropped
//! DIR/manifest.jsonl     one line per attempted sample (sharded runs: manifest.shard-I-of-N.jsonl,
//!                        merged into manifest.jsonl by `merge_shards`)
//! ```
//! Sample `k` (stem `k` zero-padded to 6 digits) depends only on the run, the settings, `seed`
//! and `k`: its noise comes from its own stream, and batches are fixed blocks of the global index
//! range (`[b·batch, (b+1)·batch)`), so shards — which take whole blocks — compute every sample
//! exactly as an unsharded run does, byte for byte. [`rejudge`] re-applies the checks to a folder
//! without sampling again.

use super::mask::{
    judge, AreaRange, DistanceMask, DistanceMaskOptions, MaskExtractor, Reason, RejectOptions,
    Verdict,
};
use super::model::DualModel;
use super::pairs::Sampling;
use super::run::{
    grey_to_rgb, open_pairs, read_run, training_defects, zero_reference, DualTrainOptions,
};
use super::sample::{sample_pairs, Backbone, InitLatents, PairText, References, SampleSettings};
use crate::data::foreground::{black_out_foreground, ForegroundSpec};
use crate::data::mask_ops::area_fraction;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::image::{is_image_file, load_rgb, save_png};
use crate::io::image_tensor::{rgb_to_tensor, tensor_to_rgb};
use crate::runtime::Lanes;
use crate::sd::denoise::partial_start;
use crate::sd::noise::{NoiseSource, SeededNoise};
use crate::sd::pipeline::StableDiffusion;
use crate::sd::scheduler::SchedulerKind;
use crate::seed::mix;
use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::io::shard::Shard;

/// Manifest file of a shard (`manifest.jsonl` for the whole run).
fn manifest_name(shard: &Shard) -> String {
    shard.file_name("manifest", "jsonl")
}

/// The merged manifest's file name.
pub const MANIFEST: &str = "manifest.jsonl";

/// Settings of a generation run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// Samples attempted (paper: 500 per defect type).
    pub n: usize,
    /// BCM on (when the model has it).
    pub bcm: bool,
    /// Denoising steps (None: 50 with BCM, 100 without).
    pub steps: Option<usize>,
    /// Guidance (None: 2.0 with BCM, 2.5 without).
    pub guidance: Option<f64>,
    /// Scheduler (None: PNDM).
    pub scheduler: Option<SchedulerKind>,
    /// Seed of every sample's stream and of the reference order.
    pub seed: u64,
    /// Pairs per denoising batch (part of what defines a sample: keep it fixed across shards).
    pub batch: usize,
    /// Switch BCM's reference image every this many samples (paper: 50).
    pub reference_every: usize,
    /// This run's slice.
    pub shard: Shard,
    /// How strict the automatic rejection is.
    pub checks: CheckOptions,
    /// Start each whole image from a defect-free image (the block's BCM reference image before
    /// its foreground is blacked out) noised to this share of the schedule, and each part image
    /// from the noised mid-grey image; `None` starts from pure noise (the paper). A CPU-scale
    /// option: small bases trained here draw blurry objects from pure noise, and the whole branch
    /// then only has to add the defect (BENCHMARKS.md "DualAnoDiff learning at CPU scale").
    pub init_strength: Option<f64>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            n: 500,
            bcm: true,
            steps: None,
            guidance: None,
            scheduler: None,
            seed: 0,
            batch: 8,
            reference_every: 50,
            shard: Shard::ALL,
            checks: CheckOptions::default(),
            init_strength: None,
        }
    }
}

/// How strict generation's automatic rejection is, relative to the run's real training defects
/// (the checks themselves: [`judge`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckOptions {
    /// Accepted mask areas: [smallest / F, largest × F] of the training masks.
    pub area_tolerance: f64,
    /// Smallest accepted defect contrast, as a share of the training part images' median
    /// contrast (0 turns the check off).
    pub min_contrast_share: f64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            area_tolerance: 4.0,
            // Half the typical real defect, both measured through the extractor: drops masks
            // around sampling grain where the real defects stand out more (MTD break, fray,
            // uneven at 64 px), keeps the synthetic defects even drawn softer (test
            // `real_defects_drawn_softer_still_pass_the_contrast_check`); real defects as faint
            // are dropped too (BENCHMARKS.md).
            min_contrast_share: 0.5,
        }
    }
}

/// One line of `manifest.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestLine {
    /// Sample index.
    pub index: usize,
    /// File stem.
    pub stem: String,
    /// Seed of the sample's noise stream.
    pub seed: u64,
    /// BCM reference image (None without BCM).
    pub reference: Option<String>,
    /// Defect area of the extracted mask (fraction of the image).
    pub mask_area: f64,
    /// Accepted into image/ + mask/.
    pub accepted: bool,
    /// Why not.
    pub rejected: Option<String>,
    /// Steps, guidance, scheduler, BCM of the run.
    pub settings: String,
}

/// What a generation run reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerateReport {
    /// Samples attempted by this shard.
    pub attempted: usize,
    /// Accepted ones.
    pub accepted: usize,
    /// Rejections by reason: empty mask, area out of range, part not flat.
    pub rejected_empty: usize,
    /// See above.
    pub rejected_area: usize,
    /// See above.
    pub rejected_not_flat: usize,
    /// Rejected as far fainter than the real defects.
    pub rejected_faint: usize,
    /// Seconds per sample (wall time / attempted).
    pub secs_per_sample: f64,
}

impl GenerateReport {
    /// Counts one attempted sample's verdict; returns the rejection reason as the manifest
    /// writes it (`None` when accepted).
    fn count(&mut self, verdict: &Verdict) -> Option<String> {
        self.attempted += 1;
        match verdict {
            Verdict::Accepted => {
                self.accepted += 1;
                None
            }
            Verdict::Rejected(r) => {
                match r {
                    Reason::EmptyMask => self.rejected_empty += 1,
                    Reason::AreaOutOfRange { .. } => self.rejected_area += 1,
                    Reason::PartNotFlat { .. } => self.rejected_not_flat += 1,
                    Reason::FaintDefect { .. } => self.rejected_faint += 1,
                }
                Some(r.to_string())
            }
        }
    }
}

/// The mask extractor and the rejection checks of a run, from its training defects at the
/// geometry it was trained on: their area range widened by the tolerance, and a share of their
/// median contrast.
fn checks(run: &DualTrainOptions, o: &CheckOptions) -> Result<(DistanceMask, RejectOptions)> {
    if !(o.min_contrast_share >= 0.0 && o.min_contrast_share.is_finite()) {
        return Err(Error::invalid(format!(
            "minimum contrast share {} must be a finite number ≥ 0",
            o.min_contrast_share
        )));
    }
    let (_, sampler) = open_pairs(run)?;
    let extractor = DistanceMask::new(DistanceMaskOptions::default());
    let defects = training_defects(&sampler, run.seed, &extractor)?;
    let areas: Vec<f64> = defects.iter().map(|d| d.area).collect();
    let area = AreaRange::from_areas(&areas, o.area_tolerance)?;
    let mut contrasts: Vec<f32> = defects.iter().filter_map(|d| d.contrast).collect();
    contrasts.sort_by(f32::total_cmp);
    let min_contrast = match contrasts.get(contrasts.len() / 2) {
        Some(&median) if o.min_contrast_share > 0.0 => Some(median * o.min_contrast_share as f32),
        _ => None,
    };
    let reject = RejectOptions {
        area: Some(area),
        min_contrast,
        fill: extractor.options().fill,
        sigma: extractor.options().sigma,
        border: extractor.options().border,
        ..RejectOptions::default()
    };
    Ok((extractor, reject))
}

/// Where a pair's files live: `out` when accepted, `out/rejected` when not.
fn pair_dir(out: &Path, accepted: bool) -> PathBuf {
    if accepted {
        out.to_path_buf()
    } else {
        out.join("rejected")
    }
}

/// BCM reference images: defect-free images and their backgrounds (foreground blacked out),
/// at full size.
struct ReferencePool {
    images: Vec<Reference>,
}

/// A defect-free image and its background (the foreground blacked out).
struct Reference {
    name: String,
    image: RgbImage,
    background: RgbImage,
}

impl ReferencePool {
    fn open(dir: &Path, run: &DualTrainOptions) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no defect-free images for BCM's references",
                dir.display()
            )));
        }
        let fg = ForegroundSpec::parse(&run.foreground)?.build()?;
        let mut images = Vec::with_capacity(files.len());
        for p in files {
            let image = load_rgb(&p)?;
            let mask = fg.estimate(&image, Some(&p))?;
            let background = black_out_foreground(&image, &mask)?;
            images.push(Reference {
                name: p.display().to_string(),
                image,
                background,
            });
        }
        Ok(Self { images })
    }

    /// The reference of block `r` (every `reference_every` samples): a seeded permutation of the
    /// pool, at the training geometry (squashed, or a seeded native-scale window, the same window
    /// for the image and its background).
    fn get(&self, r: usize, seed: u64, sampling: Sampling) -> Result<Reference> {
        let n = self.images.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0x5EF5));
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let full = &self.images[order[r % n]];
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ r as u64 ^ 0xC0FF));
        let (image, background) = match sampling {
            Sampling::Resize { size, .. } => {
                let f = |img: &RgbImage| imageops::resize(img, size, size, FilterType::Triangle);
                (f(&full.image), f(&full.background))
            }
            Sampling::DefectCrop { size, scale } => {
                let (w, h) = full.image.dimensions();
                let s = scale.max(size as f32 / w.min(h) as f32);
                let (sw, sh) = ((w as f32 * s).round() as u32, (h as f32 * s).round() as u32);
                let (sw, sh) = (sw.max(size), sh.max(size));
                let x = rng.random_range(0..=sw - size);
                let y = rng.random_range(0..=sh - size);
                let f = |img: &RgbImage| {
                    let scaled = imageops::resize(img, sw, sh, FilterType::Triangle);
                    imageops::crop_imm(&scaled, x, y, size, size).to_image()
                };
                (f(&full.image), f(&full.background))
            }
        };
        Ok(Reference {
            name: full.name.clone(),
            image,
            background,
        })
    }
}

/// Generates the shard's samples of a trained run into `out`; `progress(done, total)`.
pub fn dual_generate(
    run_dir: &Path,
    o: &GenerateOptions,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<GenerateReport> {
    let dev = Device::Cpu;
    let run = read_run(run_dir)?;
    let sd = run.model.load(&dev)?;
    let model = DualModel::load(run_dir, &sd.unet, &sd.text_encoder, false, &dev)?;
    model.install(&sd.unet, &sd.text_encoder);
    let bcm = o.bcm && model.config.bcm;
    let paper = SampleSettings::paper(bcm);
    let settings = SampleSettings {
        steps: o.steps.unwrap_or(paper.steps),
        guidance: o.guidance.unwrap_or(paper.guidance),
        scheduler: o.scheduler.unwrap_or(paper.scheduler),
        negative_prompt: String::new(),
    };
    if o.batch == 0 || o.reference_every == 0 {
        return Err(Error::invalid(
            "--batch and --reference-every must be at least 1",
        ));
    }
    let sampling = run.pairs.sampling;
    let size = sampling.size() as usize;
    if let Some(st) = o.init_strength {
        // Checked before any image is read, with the flag's name; sampling applies the same rule.
        partial_start(settings.steps, st)
            .map_err(|e| Error::invalid(format!("--init-strength: {e}")))?;
    }
    // Defect-free images: BCM's references, and the starting images of `--init-strength`.
    let refs = if bcm || o.init_strength.is_some() {
        let dir = run.good_dir()?.ok_or_else(|| {
            Error::invalid(
                "BCM and --init-strength need defect-free images: train with --good DIR, or use --bcm off without --init-strength",
            )
        })?;
        Some(ReferencePool::open(&dir, &run)?)
    } else {
        None
    };
    let (extractor, reject) = checks(&run, &o.checks)?;
    let text = PairText::encode(&sd, &model, &settings.negative_prompt)?;
    let zero = zero_reference(&sd, size)?;
    let described = format!(
        "{:?} {} steps, guidance {}, BCM {}{}",
        settings.scheduler,
        settings.steps,
        settings.guidance,
        if bcm { "on" } else { "off" },
        match o.init_strength {
            Some(st) => format!(", from a defect-free image at strength {st}"),
            None => String::new(),
        }
    );
    for sub in [
        "image",
        "mask",
        "part",
        "rejected/image",
        "rejected/mask",
        "rejected/part",
    ] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let blocks: Vec<usize> = (0..o.n.div_ceil(o.batch))
        .filter(|b| b % o.shard.count == o.shard.index)
        .collect();
    let total: usize = blocks
        .iter()
        .map(|b| (o.n - b * o.batch).min(o.batch))
        .sum();
    let mut lines = Vec::new();
    let mut report = GenerateReport::default();
    let t0 = std::time::Instant::now();
    progress(0, total);
    // One block's samples: indices, seeds, reference names and the decoded images (whole, part
    // interleaved). Blocks are independent, so several run side by side, one per core.
    let sample_block = |b: usize| -> Result<SampledBlock> {
        let idx: Vec<usize> = (b * o.batch..((b + 1) * o.batch).min(o.n)).collect();
        let seeds: Vec<u64> = idx.iter().map(|&k| mix(o.seed ^ mix(k as u64))).collect();
        let mut streams: Vec<Box<dyn NoiseSource>> = seeds
            .iter()
            .map(|&s| Box::new(SeededNoise::new(s)) as Box<dyn NoiseSource>)
            .collect();
        let mut ref_names = Vec::new();
        let (mut bg_lat, mut init_lat) = (Vec::new(), Vec::new());
        // The samples of one reference block share its images: read and encode them once.
        let mut block: Option<(usize, String, Option<Tensor>, Option<Tensor>)> = None;
        for &k in &idx {
            let Some(pool) = &refs else {
                ref_names.push(None);
                continue;
            };
            let r = k / o.reference_every;
            if block.as_ref().map(|b| b.0) != Some(r) {
                let reference = pool.get(r, o.seed, sampling)?;
                let encode = |img: &RgbImage| sd.encode_mean(&rgb_to_tensor(img, &dev)?);
                let bg = bcm.then(|| encode(&reference.background)).transpose()?;
                let init = o
                    .init_strength
                    .map(|_| encode(&reference.image))
                    .transpose()?;
                block = Some((r, reference.name, bg, init));
            }
            let (_, name, bg, init) = block.as_ref().expect("set for this block above");
            bg_lat.extend(bg.clone());
            init_lat.extend(init.clone());
            ref_names.push(Some(name.clone()));
        }
        let backgrounds = if bcm {
            Some(Tensor::cat(&bg_lat, 0)?)
        } else {
            None
        };
        let inits = match o.init_strength {
            Some(st) => Some((Tensor::cat(&init_lat, 0)?, st)),
            None => None,
        };
        let latents = sample_pairs(
            &Backbone::of(&sd),
            &model,
            &text,
            &settings,
            backgrounds.as_ref().map(|bg| References {
                backgrounds: bg,
                zero: &zero,
            }),
            inits.as_ref().map(|(whole, strength)| InitLatents {
                whole,
                part: &zero,
                strength: *strength,
            }),
            &mut streams,
            (
                sd.sample_channels(),
                size / sd.vae_scale_factor(),
                size / sd.vae_scale_factor(),
            ),
        )?;
        let images = tensor_to_rgb(&decode(&sd, &latents)?)?;
        Ok(SampledBlock {
            idx,
            seeds,
            ref_names,
            images,
        })
    };
    let lanes = Lanes::new(sd.unet.config().side_by_side().min(blocks.len()))
        .map_err(|e| Error::invalid(format!("starting sampling threads: {e}")))?;
    for group in blocks.chunks(lanes.len()) {
        for block in lanes.map(group.len(), |i| sample_block(group[i])) {
            let SampledBlock {
                idx,
                seeds,
                ref_names,
                images,
            } = block?;
            for (j, pair) in images.chunks(2).enumerate() {
                let k = idx[j];
                let stem = format!("{k:06}");
                let (whole, part) = (&pair[0], &pair[1]);
                let mask = extractor.extract(part)?;
                let area = area_fraction(&mask);
                let verdict = judge(part, &mask, &reject)?;
                let why = report.count(&verdict);
                let dir = pair_dir(out, why.is_none());
                save_png(&dir.join("image").join(format!("{stem}.png")), whole)?;
                save_png(&dir.join("part").join(format!("{stem}.png")), part)?;
                save_png(
                    &dir.join("mask").join(format!("{stem}.png")),
                    &grey_to_rgb(&mask),
                )?;
                lines.push(ManifestLine {
                    index: k,
                    stem,
                    seed: seeds[j],
                    reference: ref_names[j].clone(),
                    mask_area: area,
                    accepted: why.is_none(),
                    rejected: why,
                    settings: described.clone(),
                });
            }
            progress(report.attempted, total);
        }
    }
    report.secs_per_sample = t0.elapsed().as_secs_f64() / report.attempted.max(1) as f64;
    write_manifest(&out.join(manifest_name(&o.shard)), &lines)?;
    Ok(report)
}

/// What [`dual_generate`] samples for one block before judging and writing it.
struct SampledBlock {
    idx: Vec<usize>,
    seeds: Vec<u64>,
    ref_names: Vec<Option<String>>,
    images: Vec<RgbImage>,
}

/// Re-applies the current mask extraction and checks to the pairs already in `out` (a merged
/// `dual-generate` folder), without sampling again: after an upgrade that changed the checks, or
/// to try other [`CheckOptions`]. Each pair's mask is extracted again from its part image, its
/// files move between `out` and `out/rejected` as the new verdict says, and `manifest.jsonl` is
/// rewritten (atomically, last). Files are looked up in both places, so an interrupted re-judge
/// can simply be run again. Errors name a missing file; nothing is deleted but a replaced mask.
pub fn rejudge(run_dir: &Path, out: &Path, o: &CheckOptions) -> Result<GenerateReport> {
    let run = read_run(run_dir)?;
    let (extractor, reject) = checks(&run, o)?;
    let manifest = out.join(MANIFEST);
    let mut lines = read_manifest(&manifest)?;
    let mut report = GenerateReport::default();
    let t0 = std::time::Instant::now();
    let find = |sub: &str, stem: &str| -> Result<PathBuf> {
        let name = format!("{stem}.png");
        [true, false]
            .iter()
            .map(|&acc| pair_dir(out, acc).join(sub).join(&name))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{}: sample {stem} of the manifest has no {sub}/{name} (neither accepted nor rejected)",
                    out.display()
                ))
            })
    };
    for line in &mut lines {
        let (part_path, image_path) = (find("part", &line.stem)?, find("image", &line.stem)?);
        let part = load_rgb(&part_path)?;
        let mask = extractor.extract(&part)?;
        let why = report.count(&judge(&part, &mask, &reject)?);
        let dir = pair_dir(out, why.is_none());
        for sub in ["image", "mask", "part"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let name = format!("{}.png", line.stem);
        save_png(&dir.join("mask").join(&name), &grey_to_rgb(&mask))?;
        for (from, sub) in [(part_path, "part"), (image_path, "image")] {
            let to = dir.join(sub).join(&name);
            if from != to {
                std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
        }
        let stale = pair_dir(out, why.is_some()).join("mask").join(&name);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
        }
        line.mask_area = area_fraction(&mask);
        line.accepted = why.is_none();
        line.rejected = why;
    }
    report.secs_per_sample = t0.elapsed().as_secs_f64() / report.attempted.max(1) as f64;
    write_manifest(&manifest, &lines)?;
    Ok(report)
}

/// Decoded images in [-1, 1] of UNet samples.
fn decode(sd: &StableDiffusion, latents: &Tensor) -> Result<Tensor> {
    sd.decode(latents)
}

fn write_manifest(path: &Path, lines: &[ManifestLine]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        text.push_str(&serde_json::to_string(l).map_err(|e| Error::invalid(e.to_string()))?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Reads a manifest (JSON lines); errors name the file and line.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::config(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Merges the shard manifests of `count` shards in `dir` into `manifest.jsonl`, ordered by
/// sample index (what an unsharded run writes), and removes the shard files. Errors when a shard's
/// manifest is missing or two shards claim the same sample.
pub fn merge_shards(dir: &Path, count: usize) -> Result<usize> {
    let mut all = Vec::new();
    let mut paths = Vec::new();
    for i in 0..count {
        let p = dir.join(manifest_name(&Shard { index: i, count }));
        all.extend(read_manifest(&p)?);
        paths.push(p);
    }
    all.sort_by_key(|l| l.index);
    if let Some(w) = all.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(Error::invalid(format!(
            "{}: sample {} appears in two shard manifests",
            dir.display(),
            w[0].index
        )));
    }
    write_manifest(&dir.join(MANIFEST), &all)?;
    for p in paths {
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(all.len())
}
