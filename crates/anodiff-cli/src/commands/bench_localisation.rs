//! `anodiff bench localisation`: split → train the localisation network on an anomaly source →
//! predict → evaluate, for several seeds; prints mean ± std and writes summary.md/json.

use crate::progress::bar;
use anodiff::eval::evaluate::EvalOptions;
use anodiff::eval::localisation::Protocol;
use anodiff::eval::localisation_bench::{self, BenchOptions, Progress};
use anyhow::{Context, Result};
use std::io::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// MVTec-layout category folder (e.g. ../shared/data/mtd).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Where the training defects come from: fewshot-real, cutpaste, cutpaste-scar, draem, or
    /// dir:PATH (a folder with image/ and mask/ of generated pairs, e.g. DualAnoDiff output).
    #[arg(long, default_value = "fewshot-real")]
    pub source: String,
    /// Number of seeds (0, 1, …, N-1); each seed is one full training run.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed_offset: u64,
    /// `paper`: 256 px, width 64, 200×500 samples (METHODS.md A.7; GPU-sized).
    /// `cpu`: the reduced budget documented in `anodiff::eval::localisation::Protocol::cpu`.
    /// Either takes overrides after a colon, e.g. `cpu:size=128,width=8,samples=480`
    /// (keys size, width, batch, epochs, samples per epoch, lr, standardise).
    #[arg(long, default_value = "cpu")]
    pub protocol: String,
    /// Output folder; runs go to OUT/<dataset>/<source>/seed<k>/ (finished seeds are reused).
    #[arg(long, default_value = "out/bench-localisation")]
    pub out: PathBuf,
    /// Approximate pixel metrics with N-bin histograms (fixed memory) instead of exact sorting.
    #[arg(long)]
    pub bins: Option<usize>,
    /// Skip the per-run report.html.
    #[arg(long)]
    pub no_report: bool,
    /// Also append the summary table to this markdown file.
    #[arg(long)]
    pub append: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let protocol = Protocol::parse(&a.protocol)?;
    let o = BenchOptions {
        dataset: a.dataset.clone(),
        source: a.source.clone(),
        seeds: (a.seed_offset..a.seed_offset + a.seeds).collect(),
        protocol_name: a.protocol.clone(),
        protocol,
        out: a.out.clone(),
        eval: EvalOptions {
            bins: a.bins,
            ..EvalOptions::default()
        },
        report: !a.no_report,
    };
    let mut pb: Option<indicatif::ProgressBar> = None;
    let runs = localisation_bench::run(&o, |p| match p {
        Progress::Seed { seed, index, of } => {
            if let Some(b) = pb.take() {
                b.finish_and_clear();
            }
            eprintln!("seed {seed} ({}/{of})", index + 1);
        }
        Progress::Train(s) => {
            let b = pb.get_or_insert_with(|| bar(s.total_steps as u64, "training"));
            b.set_position(s.step as u64);
            b.set_message(format!("training, focal loss {:.4}", s.loss));
        }
        Progress::Predicted { done, of } => {
            if done == 1 {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                pb = Some(bar(of as u64, "predicting"));
            }
            if let Some(b) = &pb {
                b.set_position(done as u64);
            }
        }
        Progress::Evaluating => {
            if let Some(b) = pb.take() {
                b.finish_and_clear();
            }
            eprintln!("evaluating");
        }
    })?;
    if let Some(b) = pb.take() {
        b.finish_and_clear();
    }
    for r in &runs {
        eprintln!(
            "seed {}: {}{} (train {:.0} s, predict {:.0} s, eval {:.0} s)",
            r.seed,
            r.dir.display(),
            if r.reused { ", reused" } else { "" },
            r.timings.train,
            r.timings.predict,
            r.timings.eval
        );
    }
    let table = localisation_bench::summary_markdown(&o, &runs);
    println!("{table}");
    anodiff::io::atomic::write_atomic(
        &localisation_bench::source_dir(&o).join("summary.md"),
        table.as_bytes(),
    )?;
    if let Some(p) = &a.append {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "{table}").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
