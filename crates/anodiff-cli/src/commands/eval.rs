//! `anodiff eval`: scores a prediction folder (PRED/<defect>/<stem>.npy + PRED/scores.csv)
//! against the evaluation half of a few-shot split; prints a markdown table, writes JSON.

use crate::progress;
use anodiff::data::split::SplitManifest;
use anodiff::eval::evaluate::{evaluate_with_progress, EvalOptions};
use anodiff::eval::predictions::Predictions;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset folder (default: the one recorded in the split manifest).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Split manifest written by `anodiff split`.
    #[arg(long)]
    pub split: PathBuf,
    /// Prediction folder: <defect>/<stem>.npy float32 maps (original image size; defect-free
    /// images under `good/`) and scores.csv (`defect,stem,score`).
    #[arg(long)]
    pub predictions: PathBuf,
    /// Metrics JSON to write.
    #[arg(long, default_value = "metrics.json")]
    pub out: PathBuf,
    /// Approximate pixel metrics with N histogram bins (fixed memory) instead of exact ones.
    #[arg(long)]
    pub bins: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let split = match &a.dataset {
        Some(d) => SplitManifest::load_at(&a.split, d)?,
        None => SplitManifest::load(&a.split)?,
    };
    let pred = Predictions::open(&a.predictions)?;
    let opts = EvalOptions {
        bins: a.bins,
        ..EvalOptions::default()
    };
    let pb = progress::bar(0, "eval");
    let report = evaluate_with_progress(&split, &pred, &opts, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    });
    pb.finish_and_clear();
    let report = report?;
    report.save_json(&a.out)?;
    print!("{}", report.to_markdown());
    println!("wrote {}", a.out.display());
    Ok(())
}
