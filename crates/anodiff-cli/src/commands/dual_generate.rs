//! `anodiff dual-generate`: defect images with pixel-aligned masks from a `dual-train` run.

use crate::progress::bar;
use anodiff::dual::generate::{
    dual_generate, merge_shards, rejudge, CheckOptions, GenerateOptions, GenerateReport, Shard,
};
use anodiff::sd::scheduler::SchedulerKind;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Output: DIR/image/<stem>.png + DIR/mask/<stem>.png (accepted pairs, what
`anodiff bench localisation --source dir:DIR` reads), DIR/part/, DIR/rejected/ (failed pairs with
the reason in the manifest) and DIR/manifest.jsonl (one line per attempted sample).

Large runs scale out: every sample depends only on (--seed, its index), so shards can run
anywhere and their folders merge into exactly what one run writes.
  anodiff dual-generate --run RUN --out DIR --shard 0/4      (… 1/4, 2/4, 3/4 elsewhere)
  anodiff dual-generate --out DIR --merge-shards 4           (after copying the shards into DIR)
  Kubernetes Indexed Job (completions: 4):  --shard env/4    (reads JOB_COMPLETION_INDEX)
  Slurm array (--array=0-3):                --shard env      (reads SLURM_ARRAY_TASK_ID/_MIN/_COUNT)"
)]
pub struct Args {
    /// The `dual-train` run folder.
    #[arg(long, required_unless_present = "merge_shards")]
    pub run: Option<PathBuf>,
    /// Samples attempted (accepted ones land in image/ + mask/).
    #[arg(long, default_value_t = 500)]
    pub n: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// BCM: `on` (reference image switched every --reference-every samples among the defect-free
    /// images) or `off`.
    #[arg(long, default_value = "on")]
    pub bcm: String,
    /// Denoising steps (default: 50 with BCM, 100 without, as the paper).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default: 2.0 with BCM, 2.5 without).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Sampler: pndm (default), ddim, euler or ddpm.
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// Seed of every sample's noise and of the reference order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pairs per denoising batch (keep it the same across the shards of one run).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Switch BCM's reference image every N samples (the paper: 50, for 500 samples). A block's
    /// samples share their reference (and, with --init-strength, their starting image), and the
    /// reference order depends only on --seed, so runs for several defect types at one seed share
    /// their references too: for a few dozen samples, lower it (e.g. to --batch) to get more than
    /// one background.
    #[arg(long, default_value_t = 50)]
    pub reference_every: usize,
    /// Accepted mask areas: [smallest / F, largest × F] of the training masks.
    #[arg(long, default_value_t = CheckOptions::default().area_tolerance)]
    pub area_tolerance: f64,
    /// Reject defects fainter than this share of the training defects' median contrast (mean
    /// smoothed distance from the part image's grey inside the extracted mask, measured the same
    /// way on the real part images): masks around sampling grain, not a drawn defect. Real
    /// defects that faint would be dropped too. 0 turns the check off.
    #[arg(long, default_value_t = CheckOptions::default().min_contrast_share)]
    pub min_contrast: f64,
    /// Start each whole image from a defect-free image (the block's reference image) noised to
    /// this share of the schedule, in (0, 1], instead of from pure noise (the paper); the part
    /// image starts from noised mid-grey. For small bases trained here, which draw blurry objects
    /// from pure noise: the whole branch then only adds the defect.
    #[arg(long)]
    pub init_strength: Option<f64>,
    /// This run's slice: I/N, or env/N and env to read a Kubernetes / Slurm array index.
    #[arg(long)]
    pub shard: Option<String>,
    /// Merge the manifests of N shards already in --out into manifest.jsonl, then stop.
    #[arg(long)]
    pub merge_shards: Option<usize>,
    /// Do not sample: re-apply the mask extraction and checks (with this --area-tolerance) to the
    /// pairs already in --out, moving them between accepted and rejected/ and rewriting
    /// manifest.jsonl — after an upgrade changed the checks, or to try another tolerance.
    #[arg(long, conflicts_with_all = ["merge_shards", "shard"])]
    pub rejudge: bool,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(n) = a.merge_shards {
        let lines = merge_shards(&a.out, n)?;
        println!(
            "merged {n} shard manifests: {lines} samples in {}",
            a.out.join("manifest.jsonl").display()
        );
        return Ok(());
    }
    let checks = CheckOptions {
        area_tolerance: a.area_tolerance,
        min_contrast_share: a.min_contrast,
    };
    let bcm = match a.bcm.as_str() {
        "on" => true,
        "off" => false,
        other => bail!("--bcm {other}: expected `on` or `off`"),
    };
    let o = GenerateOptions {
        n: a.n,
        bcm,
        steps: a.steps,
        guidance: a.guidance,
        scheduler: a.scheduler,
        seed: a.seed,
        batch: a.batch,
        reference_every: a.reference_every,
        shard: match &a.shard {
            Some(s) => Shard::parse(s)?,
            None => Shard::ALL,
        },
        checks,
        init_strength: a.init_strength,
    };
    let run = a.run.expect("clap requires --run");
    if a.rejudge {
        let r = rejudge(&run, &a.out, &checks)?;
        print_counts(&r);
        println!("rewrote {}", a.out.join("manifest.jsonl").display());
        return Ok(());
    }
    let pb = bar(a.n as u64, "dual-generate");
    let pb2 = pb.clone();
    let r = dual_generate(&run, &o, &a.out, move |done, total| {
        pb2.set_length(total as u64);
        pb2.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    print_counts(&r);
    println!("wrote {}", a.out.display());
    Ok(())
}

fn print_counts(r: &GenerateReport) {
    println!(
        "{} attempted, {} accepted; rejected: {} empty mask, {} area out of range, {} part not flat, {} too faint; {:.2} s per sample",
        r.attempted, r.accepted, r.rejected_empty, r.rejected_area, r.rejected_not_flat, r.rejected_faint, r.secs_per_sample
    );
}
