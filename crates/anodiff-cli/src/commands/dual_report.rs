//! `anodiff dual-report`: report.html for a DualAnoDiff run and its generated pairs.

use anodiff::dual::report::{default_out, write_dual_report, DualReportInput};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example, after `dual-train`, `dual-generate` and some localisation benchmarks:
  anodiff dual-report --run runs/spot --generated gen/spot \\
      --bench generated=out/bench/capsule/dir-spot --bench cutpaste=out/bench/capsule/cutpaste"
)]
pub struct Args {
    /// The dual-train run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// The dual-generate output folder.
    #[arg(long)]
    pub generated: PathBuf,
    /// A localisation benchmark to include, as LABEL=FOLDER (the folder holding summary.md); repeatable.
    #[arg(long)]
    pub bench: Vec<String>,
    /// Pairs per grid.
    #[arg(long, default_value_t = 24)]
    pub show: usize,
    /// Report folder (default: GENERATED/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// LPIPS weights (safetensors of `lpips.LPIPS(net='alex'|'vgg').state_dict()`, written by
    /// tools/export_lpips_weights.py) to report IC-LPIPS, the diversity measure of the paper: the
    /// mean pairwise LPIPS of generated images sharing their nearest training image. Without
    /// them it is not computed (no substitute is reported under that name). The paper's IS needs
    /// an Inception network and is not offered.
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let benches = a
        .bench
        .iter()
        .map(|b| {
            let (l, d) = b
                .split_once('=')
                .with_context(|| format!("--bench {b}: expected LABEL=FOLDER"))?;
            Ok((l.to_string(), PathBuf::from(d)))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.generated));
    let f = write_dual_report(&DualReportInput {
        run: a.run,
        generated: a.generated,
        benches,
        out: out.clone(),
        show: a.show,
        intro: String::new(),
        lpips_weights: a.lpips_weights,
    })?;
    println!(
        "{} of {} accepted; mask contrast {:.1} vs {:.1} moved (ratio {:.2})",
        f.accepted,
        f.attempted,
        f.generated.aligned,
        f.generated.shifted,
        f.generated.ratio()
    );
    if let Some(r) = f.real_test {
        println!(
            "real held-out defects: contrast {:.1} vs {:.1} moved (ratio {:.2})",
            r.aligned,
            r.shifted,
            r.ratio()
        );
    }
    if let Some(ic) = f.ic_lpips {
        println!(
            "IC-LPIPS {:.4} over {} of {} training images",
            ic.value, ic.clusters_used, ic.clusters
        );
    }
    println!("wrote {}", out.join("report.html").display());
    Ok(())
}
