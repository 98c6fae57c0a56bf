//! The HTML page of a pretraining run (`anodiff demo`): loss curve (read from `train_log.jsonl`
//! with `train::log::read_loss_log`), held-out losses, the sample grid next to real images,
//! timings. Built from the shared report pieces in `io::html`.

use crate::io::html::{esc, loss_svg, page_head};
use std::fmt::Write as _;

/// The page's style sheet.
const CSS: &str = "body{font-family:sans-serif;max-width:60em;margin:2em auto}\
                   img{image-rendering:pixelated;border:1px solid #ccc}td,th{padding:4px 10px}";

/// Everything the demo page shows.
#[derive(Clone, Debug, Default)]
pub struct DemoPage {
    /// Page title.
    pub title: String,
    /// Free HTML paragraph describing the run.
    pub summary: String,
    /// (step, loss) points of the loss curve.
    pub losses: Vec<(usize, f64)>,
    /// (t, trained loss, untrained loss).
    pub held_out: Vec<(usize, f64, Option<f64>)>,
    /// Image file names relative to the page, with captions.
    pub images: Vec<(String, String)>,
    /// (what, seconds).
    pub timings: Vec<(String, f64)>,
}

/// The demo page's HTML (summary, loss curve, held-out losses, images, timings).
pub fn demo_html(p: &DemoPage) -> String {
    let mut s = page_head(&p.title, CSS);
    let _ = write!(
        s,
        "<p>{}</p><h2>Training loss</h2>{}",
        p.summary,
        loss_svg(&p.losses, 640.0, 240.0)
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
