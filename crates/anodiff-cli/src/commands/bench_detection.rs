//! `anodiff bench detection`: AnomalySD + ablations + nearest-neighbour baseline over datasets,
//! shot counts and shot draws, scored by the evaluation toolkit; a summary table and report pages.

use super::detect::SettingsArgs;
use crate::progress::bar;
use anodiff::detect::bench::{bench_detection, DetectionBenchOptions};
use anodiff::detect::job::Method;
use anodiff::eval::evaluate::EvalOptions;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A detect-train run folder (one model for every dataset below).
    #[arg(long)]
    pub run: PathBuf,
    /// MVTec-layout category folder; repeat for several (each scored on its few-shot split).
    #[arg(long = "dataset", required = true)]
    pub datasets: Vec<PathBuf>,
    /// Shot counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub shots: Vec<usize>,
    /// Shot draws per count (seeds 0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Methods (comma-separated): anomalysd, ms, pg, knn, brightness (the mean-grey-level control; no model).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "anomalysd,ms,pg,knn,brightness"
    )]
    pub methods: Vec<Method>,
    /// Output folder: <dataset>/<method>/k<shots>-seed<s>/ runs, summary.md, summary.json.
    #[arg(long, default_value = "bench-detection")]
    pub out: PathBuf,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub fn run(a: Args) -> Result<()> {
    let o = DetectionBenchOptions {
        run: a.run,
        datasets: a.datasets,
        shots: a.shots,
        seeds: a.seeds,
        methods: a.methods,
        settings: a.settings.settings(),
        out: a.out,
        eval: EvalOptions::default(),
    };
    let pb = bar(0, "detect");
    let runs = bench_detection(&o, |msg, d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
        pb.set_message(msg.to_string());
    })?;
    pb.finish_and_clear();
    print!("{}", anodiff::detect::bench::summary_markdown(&runs));
    println!(
        "wrote {} and a report.html per first draw",
        o.out.join("summary.md").display()
    );
    Ok(())
}
