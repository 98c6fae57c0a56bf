//! `anodiff dataset-check`: validates an MVTec-layout dataset and prints what is wrong, per file.

use anodiff::data::mvtec::{Check, MvtecDataset, OnBadFile};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset folder in the MVTec layout.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Read image headers only (faster; misses truncated images).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(a: Args) -> Result<()> {
    let check = if a.quick { Check::Headers } else { Check::Full };
    // Skip: collect every problem instead of stopping at the first.
    let (ds, r) = MvtecDataset::open_with(&a.dataset, OnBadFile::Skip, check)?;
    println!("dataset {}", a.dataset.display());
    println!("  train/good {:>6}", ds.train_good.len());
    println!("  test/good  {:>6}", ds.test_good.len());
    for d in &ds.defects {
        println!("  test/{:<16} {:>6}", d.name, d.samples.len());
    }
    for i in &r.errors {
        println!("error: {i}");
    }
    for i in &r.warnings {
        println!("warning: {i}");
    }
    println!(
        "{} error(s), {} warning(s) ({} empty masks, {} non-binary masks)",
        r.errors.len(),
        r.warnings.len(),
        r.empty_masks.len(),
        r.non_binary_masks.len()
    );
    if !r.errors.is_empty() {
        bail!("{}: {} error(s)", a.dataset.display(), r.errors.len());
    }
    Ok(())
}
