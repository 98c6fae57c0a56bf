//! The building blocks of anodiff's self-contained HTML reports (the pretraining demo page, the
//! evaluation report): escaping, the page skeleton, and an inline SVG chart of a loss curve.
//! Plain strings only, so a page needs nothing but the PNGs it names.

use std::fmt::Write as _;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The start of a page: doctype, charset, `<title>`, the page's own `css` and an `<h1>`, both
/// showing `title` (escaped here).
pub fn page_head(title: &str, css: &str) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>{t}</title><style>{css}</style><h1>{t}</h1>",
        t = esc(title)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_skeleton() {
        assert_eq!(
            esc(r#"<a href="x">&</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        let p = page_head("a < b", "p{margin:0}");
        assert!(p.starts_with("<!doctype html><meta charset=utf-8><title>a &lt; b</title>"));
        assert!(p.ends_with("<style>p{margin:0}</style><h1>a &lt; b</h1>"));
    }
}
