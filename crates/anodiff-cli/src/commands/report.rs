//! `anodiff report`: turns an evaluation run folder into `report.html`.

use anodiff::eval::report::{write_report, ReportOptions};
use anodiff::eval::run::RunLayout;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder with run.json, split.json, metrics.json, predictions/ (as written by
    /// `anodiff bench localisation`, or by hand: `anodiff split` + a detector + `anodiff eval`).
    #[arg(long)]
    pub run: PathBuf,
    /// Test images shown per defect type (and from test/good).
    #[arg(long, default_value_t = 3)]
    pub per_type: usize,
    /// Longest side of each image panel in pixels.
    #[arg(long, default_value_t = 256)]
    pub panel: u32,
}

pub fn run(a: Args) -> Result<()> {
    let opts = ReportOptions {
        per_type: a.per_type,
        panel: a.panel,
    };
    let path = write_report(&RunLayout::new(&a.run), &opts)?;
    println!("wrote {}", path.display());
    Ok(())
}
