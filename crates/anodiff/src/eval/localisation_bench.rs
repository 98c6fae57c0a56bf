//! `anodiff bench localisation`: the downstream-detector benchmark of the generation papers
//! (METHODS.md A.7) for one dataset and one anomaly source over several seeds — split, train the
//! localisation network, predict every evaluation image, evaluate, write the report — then
//! mean ± std over seeds. A seed whose `metrics.json` exists with the same settings is reused, so
//! an interrupted benchmark continues where it stopped.

use super::evaluate::{evaluate, EvalOptions, EvalReport, MetricSet};
use super::localisation::{self, Protocol};
use super::predictions::{PredictionWriter, Predictions};
use super::report::{write_report, ReportOptions};
use super::run::RunLayout;
use super::sources::{from_spec, SourceContext};
use crate::data::mvtec::{MvtecDataset, OnBadFile};
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::io::image::load_square;
use crate::io::json::{read_json, write_json};
use crate::train::StepStats;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What `anodiff bench localisation` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// MVTec-layout dataset folder.
    pub dataset: PathBuf,
    /// Anomaly source spec (`fewshot-real`, `cutpaste`, `cutpaste-scar`, `draem`, `dir:PATH`).
    pub source: String,
    /// One run per seed, in this order.
    pub seeds: Vec<u64>,
    /// `paper` or `cpu`, for the record.
    pub protocol_name: String,
    /// The protocol's settings.
    pub protocol: Protocol,
    /// Runs go to `out/<dataset>/<source>/seed<k>/`.
    pub out: PathBuf,
    /// Pixel-metric options for `evaluate`.
    pub eval: EvalOptions,
    /// Also write each seed's `report.html`.
    pub report: bool,
}

/// Wall times of one seed, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Training the network.
    pub train: f64,
    /// Predicting every evaluation image.
    pub predict: f64,
    /// Evaluating the predictions.
    pub eval: f64,
    /// The whole seed, including split and set-up.
    pub total: f64,
}

/// One finished seed.
#[derive(Debug, Clone)]
pub struct SeedRun {
    /// Its seed.
    pub seed: u64,
    /// Its run folder.
    pub dir: PathBuf,
    /// Its evaluation report.
    pub metrics: EvalReport,
    /// How long it took.
    pub timings: Timings,
    /// True when an earlier, finished run was reused.
    pub reused: bool,
}

/// What the caller's progress display is told.
pub enum Progress<'a> {
    /// A seed starts.
    Seed {
        /// The seed.
        seed: u64,
        /// Its position in the list, from 0.
        index: usize,
        /// Number of seeds.
        of: usize,
    },
    /// A training step finished.
    Train(&'a StepStats),
    /// An evaluation image was predicted.
    Predicted {
        /// Images predicted so far.
        done: usize,
        /// Images to predict.
        of: usize,
    },
    /// The predictions are being scored.
    Evaluating,
}

/// A name usable as a folder: the dataset folder name, and the source with `dir:` paths
/// reduced to their last component (a mixture `A+B`: each part so, joined by `+`).
pub fn slug(s: &str) -> String {
    let parts = crate::eval::sources::mix::split_mix(s, &crate::eval::sources::spec::NAMED);
    if parts.len() > 1 {
        return parts.iter().map(|p| slug(p)).collect::<Vec<_>>().join("+");
    }
    let s = match s.strip_prefix("dir:") {
        Some(p) => format!(
            "dir-{}",
            Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        None => s.to_string(),
    };
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The dataset's category name (its folder name), or `dataset`.
pub fn dataset_name(dataset: &Path) -> String {
    crate::data::mvtec::category_name(dataset).unwrap_or_else(|| "dataset".into())
}

/// The folder of this (dataset, source): one `seed<k>/` per seed, and `summary.md`.
pub fn source_dir(o: &BenchOptions) -> PathBuf {
    o.out
        .join(slug(&dataset_name(&o.dataset)))
        .join(slug(&o.source))
}

/// The folder of one seed's run.
pub fn seed_dir(o: &BenchOptions, seed: u64) -> PathBuf {
    source_dir(o).join(format!("seed{seed}"))
}

/// Runs every seed (reusing finished ones) and returns them in order.
pub fn run(o: &BenchOptions, mut progress: impl FnMut(Progress)) -> Result<Vec<SeedRun>> {
    if o.seeds.is_empty() {
        return Err(Error::invalid("bench localisation: no seeds given"));
    }
    o.protocol.validate()?;
    let (ds, _) = MvtecDataset::open(&o.dataset, OnBadFile::Error)?;
    let split = Arc::new(SplitManifest::few_shot(&ds)?);
    let mut ctx: Option<SourceContext> = None;
    let mut out = Vec::with_capacity(o.seeds.len());
    for (i, &seed) in o.seeds.iter().enumerate() {
        progress(Progress::Seed {
            seed,
            index: i,
            of: o.seeds.len(),
        });
        let dir = seed_dir(o, seed);
        if let Some(r) = finished(o, seed, &dir)? {
            out.push(r);
            continue;
        }
        // Defect-free training images are decoded and resized once for all seeds.
        let ctx = match &ctx {
            Some(c) => c.clone(),
            None => {
                let c = context(&split, o.protocol.size as u32)?;
                ctx = Some(c.clone());
                c
            }
        };
        out.push(run_seed(o, seed, &dir, &split, &ctx, &mut progress)?);
    }
    Ok(out)
}

fn context(split: &Arc<SplitManifest>, size: u32) -> Result<SourceContext> {
    let good = load_square(&split.train_good, size, |e| split.load_image(e))?;
    Ok(SourceContext {
        split: split.clone(),
        good: Arc::new(good),
        size,
    })
}

/// The settings a finished run must match to be reused.
fn settings(o: &BenchOptions, seed: u64) -> serde_json::Value {
    json!({
        "dataset": o.dataset.canonicalize().unwrap_or_else(|_| o.dataset.clone()),
        "source": o.source,
        "seed": seed,
        "protocol_name": o.protocol_name,
        "protocol": o.protocol,
        "eval": o.eval,
    })
}

fn finished(o: &BenchOptions, seed: u64, dir: &Path) -> Result<Option<SeedRun>> {
    let run = RunLayout::new(dir);
    if !run.metrics().exists() || !run.info().exists() {
        return Ok(None);
    }
    let info: serde_json::Value = read_json(&run.info())?;
    if info.get("settings") != Some(&settings(o, seed)) {
        return Ok(None);
    }
    let metrics: EvalReport = read_json(&run.metrics())?;
    let timings: Timings = serde_json::from_value(info["timings"].clone())
        .map_err(|e| Error::config(run.info(), e))?;
    Ok(Some(SeedRun {
        seed,
        dir: dir.to_path_buf(),
        metrics,
        timings,
        reused: true,
    }))
}

fn run_seed(
    o: &BenchOptions,
    seed: u64,
    dir: &Path,
    split: &Arc<SplitManifest>,
    ctx: &SourceContext,
    progress: &mut impl FnMut(Progress),
) -> Result<SeedRun> {
    let run = RunLayout::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    split.save(&run.split())?;
    let t0 = Instant::now();
    let mut source = from_spec(&o.source, ctx)?;
    let net = localisation::train(
        ctx,
        source.as_mut(),
        &o.protocol,
        seed,
        Some(&run.train_dir()),
        |s| progress(Progress::Train(s)),
    )?;
    let train = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let of = split.eval_good.len() + split.defects.values().map(|d| d.test.len()).sum::<usize>();
    let mut writer = PredictionWriter::create(&run.predictions())?;
    let mut done = 0;
    localisation::predict(&net, split, &o.protocol, |defect, stem, map, score| {
        writer.write(defect, stem, &map, score)?;
        done += 1;
        progress(Progress::Predicted { done, of });
        Ok(())
    })?;
    writer.finish()?;
    let predict = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    progress(Progress::Evaluating);
    let pred = Predictions::open(&run.predictions())?;
    let metrics = evaluate(split, &pred, &o.eval)?;
    metrics.save_json(&run.metrics())?;
    let eval = t2.elapsed().as_secs_f64();
    let timings = Timings {
        train,
        predict,
        eval,
        total: t0.elapsed().as_secs_f64(),
    };
    let info = json!({
        "name": format!("{} / {} / seed {seed} / {} protocol",
            dataset_name(&o.dataset), o.source, o.protocol_name),
        "settings": settings(o, seed),
        "timings": timings,
        "threads": rayon::current_num_threads(),
    });
    write_json(&run.info(), &info)?;
    if o.report {
        write_report(&run, &ReportOptions::default())?;
    }
    Ok(SeedRun {
        seed,
        dir: dir.to_path_buf(),
        metrics,
        timings,
        reused: false,
    })
}

/// Mean and sample standard deviation (n − 1; 0 for one value), ignoring NaN.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

/// A metric's column header and how to read it from a set.
pub type Field = (&'static str, fn(&MetricSet) -> f64);

/// The seven metrics of every benchmark table, in column order.
pub const FIELDS: [Field; 7] = [
    ("image AUROC", |m| m.image_auroc),
    ("image AP", |m| m.image_ap),
    ("image F1-max", |m| m.image_f1_max),
    ("pixel AUROC", |m| m.pixel_auroc),
    ("pixel AP", |m| m.pixel_ap),
    ("pixel F1-max", |m| m.pixel_f1_max),
    ("AU-PRO", |m| m.pixel_aupro),
];

/// One table cell: the metric over `sets` in percent, "mean ± std" (or "n/a").
pub fn cell(sets: &[MetricSet], f: fn(&MetricSet) -> f64) -> String {
    let xs: Vec<f64> = sets.iter().map(|m| 100.0 * f(m)).collect();
    match mean_std(&xs) {
        (m, _) if !m.is_finite() => "n/a".into(),
        (m, s) => format!("{m:.1} ± {s:.1}"),
    }
}

/// Markdown: one overall row for this (dataset, source), then per-defect rows, in percent
/// (mean ± std over seeds), with the mean wall time per run.
pub fn summary_markdown(o: &BenchOptions, runs: &[SeedRun]) -> String {
    let mut s = String::from("| dataset | source | defect |");
    for (h, _) in FIELDS {
        s.push_str(&format!(" {h} |"));
    }
    s.push_str(" wall time / run |\n|---|---|---|");
    s.push_str(&"---|".repeat(FIELDS.len() + 1));
    s.push('\n');
    let (wall, wall_sd) = mean_std(&runs.iter().map(|r| r.timings.total).collect::<Vec<_>>());
    let name = dataset_name(&o.dataset);
    let mut row = |defect: &str, sets: Vec<MetricSet>, time: String| {
        s.push_str(&format!("| {name} | {} | {defect} |", o.source));
        for (_, f) in FIELDS {
            s.push_str(&format!(" {} |", cell(&sets, f)));
        }
        s.push_str(&format!(" {time} |\n"));
    };
    row(
        "**all**",
        runs.iter().map(|r| r.metrics.overall).collect(),
        format!("{:.0} ± {:.0} s", wall, wall_sd),
    );
    let defects: Vec<String> = runs
        .first()
        .map(|r| r.metrics.per_defect.keys().cloned().collect())
        .unwrap_or_default();
    for d in defects {
        let sets = runs
            .iter()
            .filter_map(|r| r.metrics.per_defect.get(&d).copied())
            .collect();
        row(&d, sets, String::new());
    }
    s
}
