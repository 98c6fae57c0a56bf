//! `anodiff detect`: AnomalySD anomaly maps and scores from a detect-train run — over the
//! evaluation images of a split (prediction format, for `anodiff eval`), or over a plain folder
//! of images with a folder of normal shots (production line: maps, overlays, sorted scores).

use crate::progress::bar;
use anodiff::data::mvtec::{category_name, MvtecDataset, OnBadFile};
use anodiff::data::split::SplitManifest;
use anodiff::detect::distance::Distance;
use anodiff::detect::infer::{DetectSettings, ImageScore};
use anodiff::detect::job::{
    detect_folder, detect_split_shard, draw_shots, merge_score_shards, Method, Output,
};
use anodiff::detect::run::DetectRun;
use anodiff::io::shard::Shard;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Inference settings shared by `detect` and `bench detection`.
#[derive(clap::Args, Debug, Clone)]
pub struct SettingsArgs {
    /// λ: share of the noise schedule run (partial denoising from λ·T).
    #[arg(long, default_value_t = DetectSettings::default().strength)]
    pub strength: f64,
    /// Scheduler steps of a full run (λ·steps are run per inpainting).
    #[arg(long, default_value_t = DetectSettings::default().steps)]
    pub steps: usize,
    /// Grid scales K (comma-separated): each k×k grid's cells are repainted one at a time.
    #[arg(long, value_delimiter = ',', default_values_t = DetectSettings::default().scales)]
    pub scales: Vec<usize>,
    /// Per-pixel distance between input and repainting: l2, ssim or mix (weight-free), or lpips
    /// (needs --lpips-weights).
    #[arg(long, default_value = "mix")]
    pub distance: Distance,
    /// LPIPS network weights for --distance lpips: a safetensors file with the tensors of
    /// `lpips.LPIPS(net='alex'|'vgg').state_dict()` (tools/export_lpips_weights.py writes it).
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
    /// Gaussian σ (pixels at model size) applied to input and repainting before the distance.
    #[arg(long, default_value_t = DetectSettings::default().image_blur)]
    pub image_blur: f32,
    /// α: weight of the prototype-guided map in S = (1 − α)·S_ms + α·S_pg.
    #[arg(long, default_value_t = DetectSettings::default().alpha)]
    pub alpha: f64,
    /// Image score: max, or top:F (mean of the highest fraction F of pixels).
    #[arg(long, default_value = "top:0.05")]
    pub score: ImageScore,
    /// Quantile of the shots' own patch distances above which a patch joins the prototype mask.
    #[arg(long, default_value_t = DetectSettings::default().pg_quantile)]
    pub pg_quantile: f64,
    /// Diffusion timestep at which UNet features are taken for prototypes.
    #[arg(long, default_value_t = DetectSettings::default().features.timestep)]
    pub feature_t: usize,
    /// Inpaintings per UNet call (lower it if memory is short).
    #[arg(long, default_value_t = DetectSettings::default().batch)]
    pub batch: usize,
    /// Seed of the start noise (shared by every image and cell).
    #[arg(long, default_value_t = 0)]
    pub noise_seed: u64,
}

impl SettingsArgs {
    /// The library settings.
    pub fn settings(&self) -> DetectSettings {
        let d = DetectSettings::default();
        DetectSettings {
            strength: self.strength,
            steps: self.steps,
            scales: self.scales.clone(),
            distance: self.distance,
            lpips_weights: self.lpips_weights.clone(),
            image_blur: self.image_blur,
            alpha: self.alpha,
            score: self.score,
            pg_quantile: self.pg_quantile,
            features: anodiff::detect::features::FeatureOptions {
                timestep: self.feature_t,
                ..d.features.clone()
            },
            batch: self.batch,
            seed: self.noise_seed,
            ..d
        }
    }
}

/// The detection jobs' progress callback (images done, images in all, seconds per image) on `pb`.
fn per_image(pb: &indicatif::ProgressBar) -> impl FnMut(usize, usize, f64) + '_ {
    move |done, total, secs| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        pb.set_message(format!("detect {secs:.1} s/image"));
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A detect-train run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// MVTec-layout category folder to detect on (split mode).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Split manifest (`anodiff split`); default: the few-shot split of --dataset computed now.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Number of normal shots drawn from train/good (split mode), or a folder of normal images
    /// (production mode, with --images).
    #[arg(long)]
    pub shots: String,
    /// Seed of the shot draw.
    #[arg(long, default_value_t = 0)]
    pub shot_seed: u64,
    /// Production mode: a folder of images to score (no split, no ground truth).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Category the images show (default: the dataset folder's name, or the run's only category).
    #[arg(long)]
    pub category: Option<String>,
    /// Methods (comma-separated): anomalysd, ms (multi-scale only), pg (prototype only), knn
    /// (nearest-neighbour baseline on the same features), brightness (control: mean grey level,
    /// no model). With one method --out is its
    /// prediction folder; with several, --out/<method>/.
    #[arg(long, value_delimiter = ',', default_value = "anomalysd")]
    pub methods: Vec<Method>,
    /// Output: prediction folder(s) (split mode) or maps + overlays + scores.csv (production mode).
    #[arg(long)]
    pub out: PathBuf,
    /// Split mode: score only shard I of N of the evaluation images (`I/N`; `env/N` or `env` reads
    /// I from a Kubernetes Indexed Job or a Slurm array task); each shard writes its maps and
    /// scores.shard-I-of-N.csv into the same --out; join them with --merge-shards N.
    #[arg(long)]
    pub shard: Option<String>,
    /// Join the N shards' scores in --out (every method folder) into scores.csv, then exit.
    #[arg(long)]
    pub merge_shards: Option<usize>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(n) = a.merge_shards {
        let mut dirs = vec![a.out.clone()];
        dirs.extend(a.methods.iter().map(|m| a.out.join(m.name())));
        let mut merged = 0;
        for d in dirs.iter().filter(|d| {
            d.join(Shard { index: 0, count: n }.file_name("scores", "csv"))
                .is_file()
        }) {
            let k = merge_score_shards(d, n)?;
            eprintln!(
                "{}: {k} images from {n} shards",
                d.join("scores.csv").display()
            );
            merged += 1;
        }
        if merged == 0 {
            bail!(
                "no scores.shard-0-of-{n}.csv in {} (or its method folders)",
                a.out.display()
            );
        }
        return Ok(());
    }
    let run = DetectRun::open(&a.run)?;
    let settings = a.settings.settings();
    if let Some(images) = &a.images {
        let category = match (&a.category, run.config.categories.as_slice()) {
            (Some(c), _) => c.clone(),
            (None, [only]) => only.clone(),
            (None, cats) => bail!(
                "the run serves several categories ({}); name the one these images show with --category",
                cats.join(", ")
            ),
        };
        let shots = PathBuf::from(&a.shots);
        if !shots.is_dir() {
            bail!(
                "--shots must be a folder of normal images with --images (got `{}`)",
                a.shots
            );
        }
        let pb = bar(0, "detect");
        let scored = detect_folder(
            &run,
            &category,
            &settings,
            &shots,
            images,
            &a.out,
            per_image(&pb),
        )?;
        pb.finish_and_clear();
        if let Some(top) = scored.first() {
            eprintln!(
                "most anomalous: {} (score {:.4})",
                top.image.display(),
                top.score
            );
        }
        eprintln!(
            "wrote {} maps, overlays and {}",
            scored.len(),
            a.out.join("scores.csv").display()
        );
        return Ok(());
    }
    let dataset = a
        .dataset
        .clone()
        .context("split mode needs --dataset (or give --images and a --shots folder)")?;
    let k: usize = a
        .shots
        .parse()
        .with_context(|| format!("--shots `{}` must be a number in split mode", a.shots))?;
    let split = match &a.split {
        Some(s) => SplitManifest::load_at(s, &dataset)?,
        None => {
            let (ds, _) = MvtecDataset::open(&dataset, OnBadFile::Error)?;
            SplitManifest::few_shot(&ds)?
        }
    };
    let category = a
        .category
        .clone()
        .or_else(|| category_name(&dataset))
        .context("cannot name the category: pass --category")?;
    let shots = draw_shots(&split, k, a.shot_seed)?;
    let mut methods = a.methods.clone();
    methods.dedup();
    let outputs: Vec<Output> = methods
        .iter()
        .map(|&m| Output {
            draw: 0,
            method: m,
            dir: if methods.len() == 1 {
                a.out.clone()
            } else {
                a.out.join(m.name())
            },
            normal_dir: None,
        })
        .collect();
    let shard = match &a.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let pb = bar(0, "detect");
    let summary = detect_split_shard(
        &run,
        &split,
        &category,
        &settings,
        &[shots],
        &outputs,
        shard,
        per_image(&pb),
    )?;
    pb.finish_and_clear();
    eprintln!(
        "{} images, {:.2} s/image, {:.1} inpaintings/s; prompt \"{}\"; shots {}",
        summary.images,
        summary.secs_per_image,
        summary.inpaintings_per_sec,
        summary.prompt,
        summary.shots[0].join(", ")
    );
    for o in &outputs {
        eprintln!(
            "{}: {} (anodiff eval --split SPLIT --predictions {})",
            o.method.name(),
            o.dir.display(),
            o.dir.display()
        );
    }
    Ok(())
}
