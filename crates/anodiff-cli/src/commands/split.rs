//! `anodiff split`: writes the few-shot split manifest (JSON) of an MVTec-layout dataset.

use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
use anodiff::data::split::SplitManifest;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset folder in the MVTec layout (train/good, test/<type>, ground_truth/<type>).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Manifest to write.
    #[arg(long, default_value = "split.json")]
    pub out: PathBuf,
    /// Leave out files with errors (listed) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
}

pub fn run(a: Args) -> Result<()> {
    let policy = if a.skip_bad {
        OnBadFile::Skip
    } else {
        OnBadFile::Error
    };
    let (ds, report) = MvtecDataset::open(&a.dataset, policy)?;
    for i in report.errors.iter().chain(&report.warnings) {
        eprintln!("warning: {i}");
    }
    let m = SplitManifest::few_shot(&ds)?;
    m.save(&a.out)?;
    println!("{:<16} {:>6} {:>6}", "defect", "train", "eval");
    for (name, train, test) in m.counts() {
        println!("{name:<16} {train:>6} {test:>6}");
    }
    println!(
        "{:<16} {:>6} {:>6}",
        "good",
        m.train_good.len(),
        m.eval_good.len()
    );
    println!("wrote {}", a.out.display());
    Ok(())
}
