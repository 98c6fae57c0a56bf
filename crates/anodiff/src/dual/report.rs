//! `report.html` for a DualAnoDiff run and its generated pairs: what was trained, the loss curve,
//! generated pairs beside real ones, the rejection rate, how well the masks sit on the defects
//! ([`super::alignment`]) and, when given, the downstream localisation benchmarks of generated
//! and baseline sources (their `summary.md` tables from `anodiff bench localisation`).

use super::alignment::{alignment, Alignment};
use super::generate::{read_manifest, MANIFEST};
use super::mask::{part_image, PART_FILL};
use super::run::{grey_to_rgb, read_run};
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::eval::ic_lpips::{ic_lpips, IcLpips};
use crate::eval::lpips::Lpips;
use crate::io::atomic::write_atomic;
use crate::io::html::{esc, loss_svg, page_head};
use crate::io::image::{load_mask, load_rgb, save_png_grid};
use crate::io::json::write_json;
use crate::train::log::read_loss_log;
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the report shows.
pub struct DualReportInput {
    /// The `dual-train` run folder.
    pub run: PathBuf,
    /// The `dual-generate` output folder.
    pub generated: PathBuf,
    /// Localisation benchmarks to show: (label, folder holding `summary.md`).
    pub benches: Vec<(String, PathBuf)>,
    /// Where `report.html` and its images go.
    pub out: PathBuf,
    /// Pairs shown per grid.
    pub show: usize,
    /// HTML placed at the top of the page (e.g. the demo's explanation and timings).
    pub intro: String,
    /// LPIPS weights (a file `eval::lpips::Lpips::load` reads) for IC-LPIPS; `None`: not computed.
    pub lpips_weights: Option<PathBuf>,
}

/// The measured figures (also written as `report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DualReportFigures {
    /// Samples attempted.
    pub attempted: usize,
    /// Accepted into image/ + mask/.
    pub accepted: usize,
    /// Rejected, by reason text.
    pub rejected: Vec<(String, usize)>,
    /// Mask alignment of the accepted generated pairs.
    pub generated: Alignment,
    /// Mask alignment of the real training defects (the few-shot ones).
    pub real_train: Option<Alignment>,
    /// Mask alignment of the real held-out defects of the same type.
    pub real_test: Option<Alignment>,
    /// IC-LPIPS of the accepted whole images around the few-shot training images (only with
    /// user-supplied LPIPS weights and at least one cluster of two).
    pub ic_lpips: Option<IcLpips>,
}

/// Writes `out/report.html`, `out/report.json` and the grids; returns the figures.
pub fn write_dual_report(i: &DualReportInput) -> Result<DualReportFigures> {
    let run = read_run(&i.run)?;
    std::fs::create_dir_all(&i.out).map_err(|e| Error::io(&i.out, e))?;
    let lines = read_manifest(&i.generated.join(MANIFEST))?;
    let mut rejected: Vec<(String, usize)> = Vec::new();
    for l in lines.iter().filter(|l| !l.accepted) {
        let why = l.rejected.clone().unwrap_or_default();
        let key = why.split(':').next().unwrap_or("").trim().to_string();
        match rejected.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => rejected.push((key, 1)),
        }
    }
    let load_gen = |accepted: bool| -> Result<Vec<(String, RgbImage, RgbImage, GrayImage)>> {
        let base = if accepted {
            i.generated.clone()
        } else {
            i.generated.join("rejected")
        };
        lines
            .iter()
            .filter(|l| l.accepted == accepted)
            .map(|l| {
                let f = format!("{}.png", l.stem);
                Ok((
                    l.stem.clone(),
                    load_rgb(&base.join("image").join(&f))?,
                    load_rgb(&base.join("part").join(&f))?,
                    load_mask(&base.join("mask").join(&f))?,
                ))
            })
            .collect()
    };
    let accepted = load_gen(true)?;
    let gen_pairs: Vec<(RgbImage, GrayImage)> = accepted
        .iter()
        .map(|(_, w, _, m)| (w.clone(), m.clone()))
        .collect();
    let generated = alignment(&gen_pairs, 1)?;
    let size = run.pairs.sampling.size();

    // Real pairs of the same type, at the generator's size, for the grids and the alignment scale.
    let (real_train, real_test, real_grid) = match &run.data {
        super::run::PairData::Split { manifest, defect } => {
            let m = SplitManifest::load(manifest)?;
            let d = m.defects.get(defect).ok_or_else(|| {
                Error::invalid(format!("{}: no defect type {defect}", manifest.display()))
            })?;
            let load =
                |entries: &[crate::data::split::SplitEntry]| -> Result<Vec<(RgbImage, GrayImage)>> {
                    entries
                        .iter()
                        .map(|e| {
                            let img = imageops::resize(
                                &m.load_image(e)?,
                                size,
                                size,
                                FilterType::Triangle,
                            );
                            let mask =
                                imageops::resize(&m.load_mask(e)?, size, size, FilterType::Nearest);
                            Ok((img, mask))
                        })
                        .collect()
                };
            let train = load(&d.train)?;
            let test = load(&d.test)?;
            (
                Some(alignment(&train, 2)?),
                Some(alignment(&test, 3)?),
                train,
            )
        }
        super::run::PairData::Folders { .. } => (None, None, Vec::new()),
    };

    let grid = |rows: &[(RgbImage, RgbImage, RgbImage)], name: &str| -> Result<Option<String>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let flat: Vec<RgbImage> = rows
            .iter()
            .take(i.show)
            .flat_map(|(a, b, c)| [a.clone(), b.clone(), c.clone()])
            .collect();
        save_png_grid(&[&flat], 6, &i.out.join(name))?;
        Ok(Some(name.to_string()))
    };
    let gen_rows: Vec<_> = accepted
        .iter()
        .map(|(_, w, p, m)| (w.clone(), p.clone(), grey_to_rgb(m)))
        .collect();
    let rej_rows: Vec<_> = load_gen(false)?
        .into_iter()
        .map(|(_, w, p, m)| (w, p, grey_to_rgb(&m)))
        .collect();
    let real_rows: Vec<_> = real_grid
        .iter()
        .map(|(w, m)| (w.clone(), part_image(w, m, PART_FILL), grey_to_rgb(m)))
        .collect();
    let gen_png = grid(&gen_rows, "generated.png")?;
    let rej_png = grid(&rej_rows, "rejected.png")?;
    let real_png = grid(&real_rows, "real.png")?;

    let ic_lpips = match &i.lpips_weights {
        Some(w) => {
            let dev = candle_core::Device::Cpu;
            let net = Lpips::load(w, &dev)?;
            let train: Vec<RgbImage> = real_grid.iter().map(|(w, _)| w.clone()).collect();
            let gen: Vec<RgbImage> = accepted.iter().map(|(_, w, _, _)| w.clone()).collect();
            ic_lpips(&net, &train, &gen, &dev)?
        }
        None => None,
    };
    let figures = DualReportFigures {
        attempted: lines.len(),
        accepted: accepted.len(),
        rejected,
        generated,
        real_train,
        real_test,
        ic_lpips,
    };
    write_json(&i.out.join("report.json"), &figures)?;

    // The page.
    let mut h = page_head(
        "DualAnoDiff: generated defects and masks",
        "body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;padding:3px 6px}\
         table{border-collapse:collapse}img{image-rendering:pixelated;max-width:100%}code{background:#f4f4f4}",
    );
    h.push_str(&i.intro);
    let desc = serde_json::to_string_pretty(&run).unwrap_or_default();
    let _ = write!(
        h,
        "<h2>Run</h2><p>Run folder <code>{}</code>, generated pairs <code>{}</code>.</p>\
         <details><summary>settings (dual_run.json)</summary><pre>{}</pre></details>",
        esc(&i.run.display().to_string()),
        esc(&i.generated.display().to_string()),
        esc(&desc)
    );
    if let Ok(points) = read_loss_log(&i.run.join("train_log.jsonl")) {
        let _ = write!(
            h,
            "<h2>Training loss</h2>{}",
            loss_svg(&points, 700.0, 220.0)
        );
    }
    let _ = write!(
        h,
        "<h2>Generated pairs</h2><p>{} attempted, <b>{} accepted</b> ({:.0} %); rejected: {}.</p>",
        figures.attempted,
        figures.accepted,
        100.0 * figures.accepted as f64 / figures.attempted.max(1) as f64,
        if figures.rejected.is_empty() {
            "none".to_string()
        } else {
            figures
                .rejected
                .iter()
                .map(|(k, n)| format!("{n} {}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for (png, caption) in [
        (&gen_png, "Accepted generated pairs: whole image | anomaly part | extracted mask (two pairs per row)."),
        (&real_png, "Real training defects at the same size: image | image ⊙ mask on grey | mask."),
        (&rej_png, "Rejected pairs (kept apart, counted above)."),
    ] {
        if let Some(p) = png {
            let _ = write!(h, "<figure><img src=\"{p}\"><figcaption>{}</figcaption></figure>", esc(caption));
        }
    }
    let row = |name: &str, a: &Option<Alignment>| -> String {
        match a {
            Some(a) => format!(
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td></tr>",
                esc(name),
                a.pairs,
                a.aligned,
                a.shifted,
                a.ratio()
            ),
            None => String::new(),
        }
    };
    let _ = write!(
        h,
        "<h2>Do the masks sit on the defects?</h2><p>Colour contrast (0–255) between the pixels \
         under each mask and a 2-px ring around it, against the same mask moved elsewhere on the \
         same image (the control). Ratio ≈ 1: the masks do not follow what the image shows.</p>\
         <table><tr><th>pairs</th><th>n</th><th>contrast through the mask</th>\
         <th>moved mask (control)</th><th>ratio</th></tr>{}{}{}</table>",
        row("generated (accepted)", &Some(figures.generated)),
        row("real, few-shot training defects", &figures.real_train),
        row("real, held-out defects of the type", &figures.real_test),
    );
    if let Some(ic) = figures.ic_lpips {
        let _ = write!(
            h,
            "<h2>Diversity</h2><p>IC-LPIPS (LPIPS weights <code>{}</code>): <b>{:.4}</b>, the mean \
             pairwise LPIPS of accepted whole images that share their nearest training image, over \
             {} of {} training images with at least two such images.</p>",
            esc(&i.lpips_weights.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
            ic.value,
            ic.clusters_used,
            ic.clusters
        );
    }
    if !i.benches.is_empty() {
        h.push_str("<h2>Downstream localisation (anodiff bench localisation)</h2>");
        for (label, dir) in &i.benches {
            let md = dir.join("summary.md");
            let text = std::fs::read_to_string(&md).map_err(|e| Error::io(&md, e))?;
            let _ = write!(h, "<h3>{}</h3>{}", esc(label), markdown_table(&text));
        }
    }
    write_atomic(&i.out.join("report.html"), h.as_bytes())?;
    Ok(figures)
}

/// A markdown pipe table as an HTML table (`**x**` → bold); other lines are dropped.
pub fn markdown_table(md: &str) -> String {
    let mut out = String::from("<table>");
    let mut header = true;
    for line in md.lines().map(str::trim).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let tag = if header { "th" } else { "td" };
        out.push_str("<tr>");
        for c in cells {
            let c = esc(c);
            let c = match c.strip_prefix("**").and_then(|x| x.strip_suffix("**")) {
                Some(b) => format!("<b>{b}</b>"),
                None => c,
            };
            let _ = write!(out, "<{tag}>{c}</{tag}>");
        }
        out.push_str("</tr>");
        header = false;
    }
    out.push_str("</table>");
    out
}

/// The folder a report for `generated` goes to by default.
pub fn default_out(generated: &Path) -> PathBuf {
    generated.join("report")
}
