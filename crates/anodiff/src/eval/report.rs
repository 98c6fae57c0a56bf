//! `anodiff report`: one self-contained HTML page per evaluation run — what was run, the metric
//! table per defect type, the training loss, and for a few test images of every type the input,
//! its ground truth and the anomaly map over the input, side by side (PNGs next to the page).

use super::npy::Map2;
use super::predictions::Predictions;
use super::run::RunLayout;
use crate::data::split::{SplitEntry, SplitManifest};
use crate::data::subsample::evenly_spaced;
use crate::error::{Error, Result};
use crate::io::html::{esc, loss_svg, page_head};
use crate::io::json::read_json;
use crate::train::log::read_loss_log;
use image::{imageops, GrayImage, Rgb, RgbImage};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What the report page shows.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Test images shown per defect type (and from `good`), evenly spaced over the sorted list.
    pub per_type: usize,
    /// Longest side of each shown panel, in pixels.
    pub panel: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            per_type: 3,
            panel: 256,
        }
    }
}

/// The page's style sheet.
const CSS: &str = "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}\
                   table{border-collapse:collapse}td,th{padding:3px 9px;border-bottom:1px solid #ddd;\
                   text-align:right}th:first-child,td:first-child{text-align:left}\
                   figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}\
                   figcaption{font-size:85%;color:#444;overflow-wrap:anywhere}img{border:1px solid #ccc}";

/// Metric columns in display order: (JSON key, header).
const COLUMNS: &[(&str, &str)] = &[
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("image_f1_max", "image F1-max"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("pixel_f1_max", "pixel F1-max"),
    ("pixel_aupro", "AU-PRO@0.3"),
];

/// Writes `report.html` and its PNGs into the run folder; returns the page's path.
pub fn write_report(run: &RunLayout, opts: &ReportOptions) -> Result<PathBuf> {
    let metrics: Value = read_json(&run.metrics())?;
    let info = if run.info().exists() {
        read_json::<Value>(&run.info())?
    } else {
        Value::Null
    };
    let split = SplitManifest::load(&run.split())?;
    let assets = run.report_assets();
    std::fs::create_dir_all(&assets).map_err(|e| Error::io(&assets, e))?;

    let title = match info.get("name").and_then(Value::as_str) {
        Some(n) => format!("anodiff evaluation — {n}"),
        None => format!("anodiff evaluation — {}", run.root.display()),
    };
    let mut s = page_head(&title, CSS);
    if info.is_object() {
        s.push_str("<h2>Run</h2><table>");
        let mut rows = Vec::new();
        flatten("", &info, &mut rows);
        for (k, v) in rows {
            let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
        }
        s.push_str("</table>");
    }
    s.push_str(&metrics_table(&metrics));

    let log = run.train_dir().join("train_log.jsonl");
    if log.exists() {
        let pts = read_loss_log(&log)?;
        let _ = write!(
            s,
            "<h2>Training loss (focal, log scale)</h2>{}",
            loss_svg(&pts, 720.0, 220.0)
        );
    }

    let pred = Predictions::open(&run.predictions())?;
    let shown = pick_examples(&split, opts.per_type);
    // One colour scale for every shown map, so panels can be compared.
    let maps = shown
        .iter()
        .map(|(defect, e)| pred.map(defect, &e.stem))
        .collect::<Result<Vec<_>>>()?;
    let (lo, hi) = value_range(&maps);
    let _ = write!(
        s,
        "<h2>Test images</h2><p>Each row: input, ground truth (white = defect), anomaly map over \
         the input (blue {lo:.3} → red {hi:.3}, one scale for all rows) and, for detectors that \
         repaint, the image as repainted. Images are evenly spaced over each type's sorted test \
         list.</p>"
    );
    let mut current = "";
    for (i, ((defect, e), map)) in shown.iter().zip(&maps).enumerate() {
        if defect != current {
            let _ = write!(s, "<h3>{}</h3>", esc(defect));
            current = defect;
        }
        let img = split.load_image(e)?;
        let mask = match &e.mask {
            Some(_) => split.load_mask(e)?,
            None => GrayImage::new(img.width(), img.height()),
        };
        if (map.width as u32, map.height as u32) != img.dimensions() {
            return Err(Error::invalid(format!(
                "{}: map is {}x{} but the image is {}x{}",
                pred.map_path(defect, &e.stem).display(),
                map.width,
                map.height,
                img.width(),
                img.height()
            )));
        }
        let mut panels = vec![
            (img.clone(), "input"),
            (gray_to_rgb(&mask), "ground truth"),
            (overlay(&img, &heat(map, lo, hi), 0.5), "anomaly map"),
        ];
        let normal = run
            .normal_images()
            .join(defect)
            .join(format!("{}.png", e.stem));
        if normal.is_file() {
            let n = crate::io::image::load_rgb(&normal)?;
            let n = image::imageops::resize(
                &n,
                img.width(),
                img.height(),
                image::imageops::FilterType::Triangle,
            );
            panels.push((n, "repainted as normal"));
        }
        let score = pred
            .score(defect, &e.stem)
            .map(|v| format!(", score {v:.4}"))
            .unwrap_or_default();
        s.push_str("<div>");
        for (k, (panel, what)) in panels.iter().enumerate() {
            let file = format!("{i:03}_{k}.png");
            let small = thumbnail(panel, opts.panel);
            crate::io::image::save_png(&assets.join(&file), &small)?;
            let _ = write!(
                s,
                "<figure style=\"width:{}px\"><img src=\"report/{file}\" width={} height={} \
                 alt=\"{what}\"><figcaption>{}{}</figcaption></figure>",
                small.width(),
                small.width(),
                small.height(),
                esc(&format!("{what}: {}/{}", defect, e.stem)),
                if k == 2 { esc(&score) } else { String::new() }
            );
        }
        s.push_str("</div>");
    }
    let out = run.report_html();
    crate::io::atomic::write_atomic(&out, s.as_bytes())?;
    Ok(out)
}

/// Nested objects become `a.b` rows; numbers that look like seconds keep 1 decimal.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::String(x) => out.push((prefix.to_string(), x.clone())),
        Value::Number(n) if prefix.starts_with("timings.") => out.push((
            prefix.to_string(),
            format!("{:.1} s", n.as_f64().unwrap_or(f64::NAN)),
        )),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn fmt_metric(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) if x.is_finite() => format!("{:.1}", 100.0 * x),
        _ => "n/a".into(),
    }
}

/// The per-defect + overall table, in percent. Accepts `per_defect` as an object of metric sets
/// and `overall` as one metric set.
fn metrics_table(m: &Value) -> String {
    let mut s = String::from("<h2>Metrics (%)</h2><table><tr><th>defect</th>");
    for (_, h) in COLUMNS {
        let _ = write!(s, "<th>{h}</th>");
    }
    s.push_str("</tr>");
    let mut rows: Vec<(String, &Value)> = Vec::new();
    if let Some(Value::Object(per)) = m.get("per_defect") {
        rows.extend(per.iter().map(|(k, v)| (k.clone(), v)));
    }
    if let Some(o) = m.get("overall") {
        rows.push(("<b>overall</b>".into(), o));
    }
    for (name, set) in rows {
        let name = if name.starts_with("<b>") {
            name
        } else {
            esc(&name)
        };
        let _ = write!(s, "<tr><td>{name}</td>");
        for (k, _) in COLUMNS {
            let _ = write!(s, "<td>{}</td>", fmt_metric(set.get(*k)));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// Up to `k` evenly spaced test images of `good` and of every defect type.
fn pick_examples(split: &SplitManifest, k: usize) -> Vec<(String, SplitEntry)> {
    let mut out: Vec<(String, SplitEntry)> = evenly_spaced(&split.eval_good, k)
        .into_iter()
        .map(|e| ("good".to_string(), e))
        .collect();
    for (name, d) in &split.defects {
        out.extend(
            evenly_spaced(&d.test, k)
                .into_iter()
                .map(|e| (name.clone(), e)),
        );
    }
    out
}

fn value_range(maps: &[Map2]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for v in maps
        .iter()
        .flat_map(|m| m.data.iter())
        .filter(|v| v.is_finite())
    {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo, lo + 1.0);
    }
    (lo, hi)
}

/// Blue → cyan → green → yellow → red.
pub fn colormap(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0) * 4.0;
    let (r, g, b) = match t as u32 {
        0 => (0.0, t, 1.0),
        1 => (0.0, 1.0, 2.0 - t),
        2 => (t - 2.0, 1.0, 0.0),
        _ => (1.0, (4.0 - t).max(0.0), 0.0),
    };
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}

/// A map as a colour image, `lo`..`hi` spread over [`colormap`] (non-finite values at `lo`).
pub fn heat(map: &Map2, lo: f32, hi: f32) -> RgbImage {
    let scale = 1.0 / (hi - lo);
    RgbImage::from_fn(map.width as u32, map.height as u32, |x, y| {
        let v = map.data[y as usize * map.width + x as usize];
        colormap(if v.is_finite() { (v - lo) * scale } else { 0.0 })
    })
}

/// `top` blended over `base` (same size) with opacity `alpha`.
pub fn overlay(base: &RgbImage, top: &RgbImage, alpha: f32) -> RgbImage {
    RgbImage::from_fn(base.width(), base.height(), |x, y| {
        let a = base.get_pixel(x, y).0;
        let b = top.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|c| {
            ((1.0 - alpha) * a[c] as f32 + alpha * b[c] as f32).round() as u8
        }))
    })
}

fn gray_to_rgb(m: &GrayImage) -> RgbImage {
    RgbImage::from_fn(m.width(), m.height(), |x, y| {
        let v = m.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    })
}

fn thumbnail(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = side as f64 / w.max(h) as f64;
    if s >= 1.0 {
        return img.clone();
    }
    let nw = ((w as f64 * s).round() as u32).max(1);
    let nh = ((h as f64 * s).round() as u32).max(1);
    imageops::resize(img, nw, nh, imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_ends_and_monotone_hue() {
        assert_eq!(colormap(0.0), Rgb([0, 0, 255]));
        assert_eq!(colormap(1.0), Rgb([255, 0, 0]));
        assert_eq!(colormap(0.5), Rgb([0, 255, 0]));
        assert_eq!(colormap(-3.0), colormap(0.0));
    }

    #[test]
    fn run_info_is_flattened() {
        let mut rows = Vec::new();
        let v = serde_json::json!({"a": {"b": 1, "c": "x"}, "timings": {"train": 12.345}});
        flatten("", &v, &mut rows);
        assert_eq!(
            rows,
            vec![
                ("a.b".to_string(), "1".to_string()),
                ("a.c".to_string(), "x".to_string()),
                ("timings.train".to_string(), "12.3 s".to_string())
            ]
        );
    }

    #[test]
    fn table_shows_percent_and_na() {
        let m = serde_json::json!({
            "per_defect": {"crack": {"image_auroc": 0.9123, "pixel_aupro": null}},
            "overall": {"image_auroc": 0.5}
        });
        let t = metrics_table(&m);
        assert!(t.contains("<td>crack</td><td>91.2</td>"));
        assert!(t.contains("n/a"));
        assert!(t.contains("<td><b>overall</b></td><td>50.0</td>"));
    }
}
