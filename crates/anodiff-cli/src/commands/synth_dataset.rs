//! `anodiff synth-dataset`: writes the procedural defect dataset (MVTec layout, one folder per
//! category) used to pretrain and test the generators and detectors without real data.

use crate::progress::bar;
use anodiff::data::synth::{synth_dataset_with_progress, SynthOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder (replaced only if it is empty or a previous synth-dataset output).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = SynthOptions::default().size)]
    pub size: u32,
    /// Defect-free training images per category.
    #[arg(long, default_value_t = SynthOptions::default().train_good)]
    pub train_good: usize,
    /// Defect-free test images per category.
    #[arg(long, default_value_t = SynthOptions::default().test_good)]
    pub test_good: usize,
    /// Test images per defect type.
    #[arg(long, default_value_t = SynthOptions::default().per_defect)]
    pub per_defect: usize,
}

pub fn run(a: Args) -> Result<()> {
    let opts = SynthOptions {
        size: a.size,
        train_good: a.train_good,
        test_good: a.test_good,
        per_defect: a.per_defect,
    };
    let pb = bar(0, "synth-dataset");
    let summary = synth_dataset_with_progress(&a.out, a.seed, &opts, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    println!("wrote {} files:", summary.files);
    for c in &summary.categories {
        println!("  {}", c.display());
    }
    Ok(())
}
