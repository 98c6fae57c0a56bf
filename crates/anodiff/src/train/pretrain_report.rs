//! The HTML page of a pretraining run (`anodiff demo`): loss curve as an inline SVG polyline read
//! from `train_log.jsonl`, held-out losses, the sample grid next to real images, timings. Plain
//! strings only, so the page is self-contained apart from the PNGs it names.

use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// (step, loss) of every line of a trainer's JSON-lines log.
pub fn read_loss_log(path: &Path) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}: {e}", i + 1)))?;
        if let (Some(s), Some(l)) = (v["step"].as_u64(), v["loss"].as_f64()) {
            out.push((s as usize, l));
        }
    }
    Ok(out)
}

/// An SVG line chart of the raw losses (light) and their moving average (dark), log-scaled y.
pub fn loss_svg(points: &[(usize, f64)], width: f64, height: f64) -> String {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .map(|&(s, l)| (s as f64, l.log10()))
        .collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" style=\"border:1px solid #ccc\">"
    );
    if pts.is_empty() {
        s.push_str("<text x=\"10\" y=\"20\">no loss values</text></svg>");
        return s;
    }
    let (pad, x0, x1) = (30.0, pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-6);
    let map = |(x, y): (f64, f64)| {
        (
            pad + (x - x0) / (x1 - x0) * (width - 2.0 * pad),
            height - pad - (y - lo) / (hi - lo) * (height - 2.0 * pad),
        )
    };
    let line = |v: &[(f64, f64)]| -> String {
        v.iter()
            .map(|&p| {
                let (x, y) = map(p);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let k = (pts.len() / 25).max(1);
    let smooth: Vec<(f64, f64)> = (0..pts.len())
        .map(|i| {
            let w = &pts[i.saturating_sub(k)..=i];
            (
                pts[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"#9bc\" stroke-width=\"1\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#036\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"{pad}\" y=\"14\" font-size=\"11\">loss (log scale) {:.4} .. {:.4}</text>\
         <text x=\"{pad}\" y=\"{}\" font-size=\"11\">step {x0} .. {x1}</text></svg>",
        line(&pts),
        line(&smooth),
        10f64.powf(lo),
        10f64.powf(hi),
        height - 8.0
    );
    s
}

/// Everything the demo page shows.
#[derive(Clone, Debug, Default)]
pub struct DemoPage {
    pub title: String,
    /// Free HTML paragraph describing the run.
    pub summary: String,
    pub losses: Vec<(usize, f64)>,
    /// (t, trained loss, untrained loss).
    pub held_out: Vec<(usize, f64, Option<f64>)>,
    /// Image file names relative to the page, with captions.
    pub images: Vec<(String, String)>,
    /// (what, seconds).
    pub timings: Vec<(String, f64)>,
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn demo_html(p: &DemoPage) -> String {
    let mut s = format!(
        "<!doctype html><meta charset=utf-8><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
         img{{image-rendering:pixelated;border:1px solid #ccc}}td,th{{padding:4px 10px}}</style>\
         <h1>{t}</h1><p>{}</p><h2>Training loss</h2>{}",
        p.summary,
        loss_svg(&p.losses, 640.0, 240.0),
        t = esc(&p.title),
    );
    if !p.held_out.is_empty() {
        s.push_str(
            "<h2>Held-out denoising loss (test/good, fixed noise)</h2>\
             <table><tr><th>t</th><th>trained</th><th>untrained</th></tr>",
        );
        for (t, l, u) in &p.held_out {
            let u = u.map_or("-".to_string(), |u| format!("{u:.4}"));
            let _ = write!(s, "<tr><td>{t}</td><td>{l:.4}</td><td>{u}</td></tr>");
        }
        s.push_str("</table>");
    }
    for (file, caption) in &p.images {
        let _ = write!(
            s,
            "<h2>{}</h2><img src=\"{}\" alt=\"{}\" style=\"width:100%\">",
            esc(caption),
            esc(file),
            esc(caption)
        );
    }
    s.push_str("<h2>Timings</h2><table>");
    for (what, secs) in &p.timings {
        let _ = write!(s, "<tr><td>{}</td><td>{secs:.1} s</td></tr>", esc(what));
    }
    s.push_str("</table>");
    s
}
