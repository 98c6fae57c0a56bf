//! `anodiff bench detection`: AnomalySD, its two single-branch ablations and the
//! nearest-neighbour baseline over several categories, shot counts and shot draws — detect, then
//! `evaluate` (the detector never scores itself) — with one summary table (mean ± std over the
//! draws, all seven metrics) and a report page per run.
//!
//! Layout: `OUT/<dataset>/<method>/k<shots>-seed<s>/` is an evaluation run folder
//! ([`RunLayout`]: `predictions/`, `split.json`, `metrics.json`, `run.json`, `report.html`);
//! `OUT/summary.md`, `OUT/summary.json`. The multi-scale branch does not use the shots, so `ms`
//! runs once per dataset (`k0-seed0`), and every draw reuses its inpaintings.

use super::infer::DetectSettings;
use super::job::{detect_split, draw_shots, Method, Output};
use super::run::DetectRun;
use crate::data::mvtec::{MvtecDataset, OnBadFile};
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::eval::evaluate::{evaluate, EvalOptions, EvalReport};
use crate::eval::localisation_bench::{cell, dataset_name, FIELDS};
use crate::eval::predictions::Predictions;
use crate::eval::report::{write_report, ReportOptions};
use crate::eval::run::RunLayout;
use crate::io::json::write_json;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// What `bench detection` runs.
#[derive(Clone, Debug)]
pub struct DetectionBenchOptions {
    /// The detect-train run.
    pub run: PathBuf,
    /// MVTec-layout category folders (each scored with its few-shot split).
    pub datasets: Vec<PathBuf>,
    /// Shot counts.
    pub shots: Vec<usize>,
    /// Shot draws per count (seeds 0..n).
    pub seeds: usize,
    /// Methods scored.
    pub methods: Vec<Method>,
    /// Inference settings.
    pub settings: DetectSettings,
    /// Output folder.
    pub out: PathBuf,
    /// Pixel-metric options.
    pub eval: EvalOptions,
}

/// One scored run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRun {
    /// Dataset name.
    pub dataset: String,
    /// Method.
    pub method: Method,
    /// Shots (0 for the shot-free `ms`).
    pub shots: usize,
    /// Shot draw.
    pub seed: u64,
    /// Run folder.
    pub dir: PathBuf,
    /// Metrics.
    pub metrics: EvalReport,
    /// Seconds per image of the detect pass this run came from (shared by its siblings).
    pub secs_per_image: f64,
}

/// Runs everything; `progress(message, done, total)` per detected image.
pub fn bench_detection(
    o: &DetectionBenchOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<BenchRun>> {
    if o.shots.is_empty() || o.seeds == 0 || o.methods.is_empty() {
        return Err(Error::invalid(
            "bench detection needs shot counts, at least one seed and a method",
        ));
    }
    let run = DetectRun::open(&o.run)?;
    let mut results = Vec::new();
    for ds_path in &o.datasets {
        let (ds, _) = MvtecDataset::open(ds_path, OnBadFile::Error)?;
        let split = SplitManifest::few_shot(&ds)?;
        let name = dataset_name(ds_path);
        let category = crate::data::mvtec::category_name(ds_path).unwrap_or_else(|| name.clone());
        let mut draws = Vec::new();
        let mut draw_keys = Vec::new();
        for &k in &o.shots {
            for s in 0..o.seeds as u64 {
                draws.push(draw_shots(&split, k, s)?);
                draw_keys.push((k, s));
            }
        }
        let mut outputs = Vec::new();
        let mut keys = Vec::new();
        for (d, &(k, s)) in draw_keys.iter().enumerate() {
            for &m in &o.methods {
                if !m.needs_shots() && d > 0 {
                    continue;
                }
                let (kk, ss) = if m.needs_shots() { (k, s) } else { (0, 0) };
                let root = o
                    .out
                    .join(&name)
                    .join(m.name())
                    .join(format!("k{kk}-seed{ss}"));
                let layout = RunLayout::new(&root);
                outputs.push(Output {
                    draw: d,
                    method: m,
                    dir: layout.predictions(),
                    normal_dir: (d == 0 && matches!(m, Method::AnomalySd | Method::Ms))
                        .then(|| layout.normal_images()),
                });
                keys.push((m, kk, ss, root));
            }
        }
        let t0 = Instant::now();
        let msg = format!("detect {name}");
        let summary = detect_split(
            &run,
            &split,
            &category,
            &o.settings,
            &draws,
            &outputs,
            |d, t, _| progress(&msg, d, t),
        )?;
        let detect_secs = t0.elapsed().as_secs_f64();
        for (m, k, s, root) in keys {
            let layout = RunLayout::new(&root);
            split.save(&layout.split())?;
            let pred = Predictions::open(&layout.predictions())?;
            let metrics = evaluate(&split, &pred, &o.eval)?;
            metrics.save_json(&layout.metrics())?;
            write_json(
                &layout.info(),
                &json!({
                    "name": format!("{name} / {} / {k}-shot / draw {s}", m.name()),
                    "settings": o.settings,
                    "run": o.run,
                    "shots": if !m.needs_shots() { Vec::new() } else { summary.shots[draw_keys.iter().position(|&x| x == (k, s)).unwrap_or(0)].clone() },
                    "timings": { "detect_all_methods": detect_secs, "secs_per_image": summary.secs_per_image },
                }),
            )?;
            if s == 0 {
                write_report(&layout, &ReportOptions::default())?;
            }
            results.push(BenchRun {
                dataset: name.clone(),
                method: m,
                shots: k,
                seed: s,
                dir: root,
                metrics,
                secs_per_image: summary.secs_per_image,
            });
        }
    }
    write_json(&o.out.join("summary.json"), &results)?;
    crate::io::atomic::write_atomic(
        &o.out.join("summary.md"),
        summary_markdown(&results).as_bytes(),
    )?;
    Ok(results)
}

/// Markdown: per (dataset, method, shots) an overall row and per-defect rows, in percent
/// (mean ± std over shot draws).
pub fn summary_markdown(runs: &[BenchRun]) -> String {
    let mut s = String::from("| dataset | method | shots | defect |");
    for (h, _) in FIELDS {
        s.push_str(&format!(" {h} |"));
    }
    s.push_str(" s / image |\n|---|---|---|---|");
    s.push_str(&"---|".repeat(FIELDS.len() + 1));
    s.push('\n');
    let mut groups: Vec<(String, Method, usize)> = Vec::new();
    for r in runs {
        let key = (r.dataset.clone(), r.method, r.shots);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (ds, m, k) in groups {
        let rs: Vec<&BenchRun> = runs
            .iter()
            .filter(|r| r.dataset == ds && r.method == m && r.shots == k)
            .collect();
        let shots = if !m.needs_shots() {
            "–".to_string()
        } else {
            k.to_string()
        };
        let mut row = |defect: &str, sets: Vec<crate::eval::evaluate::MetricSet>, time: String| {
            s.push_str(&format!("| {ds} | {} | {shots} | {defect} |", m.name()));
            for (_, f) in FIELDS {
                s.push_str(&format!(" {} |", cell(&sets, f)));
            }
            s.push_str(&format!(" {time} |\n"));
        };
        row(
            "**all**",
            rs.iter().map(|r| r.metrics.overall).collect(),
            format!("{:.1}", rs[0].secs_per_image),
        );
        let defects: Vec<String> = rs[0].metrics.per_defect.keys().cloned().collect();
        for d in defects {
            row(
                &d,
                rs.iter()
                    .filter_map(|r| r.metrics.per_defect.get(&d).copied())
                    .collect(),
                String::new(),
            );
        }
    }
    s
}
