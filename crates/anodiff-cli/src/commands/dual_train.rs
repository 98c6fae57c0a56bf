//! `anodiff dual-train`: trains DualAnoDiff (two LoRA branches + SAIM + BCM) on the few-shot
//! training defects of one defect type, or on a user's own image + mask folders.

use crate::progress::bar;
use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
use anodiff::data::split::SplitManifest;
use anodiff::dual::pairs::{PairOptions, Sampling};
use anodiff::dual::run::{dual_train, read_run, DualTrainOptions, PairData};
use anodiff::dual::{DualConfig, Fusion};
use anodiff::sd::model_source::ModelSource;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  anodiff split --dataset data/mtd --out mtd-split.json
  anodiff dual-train --model sd15/ --dataset data/mtd --defect crack --out runs/mtd-crack
  anodiff dual-train --model sd15/ --images my/defects --masks my/masks --good my/good --out runs/mine
  anodiff dual-train --resume runs/mtd-crack --steps 8000        (continue exactly, more steps)

The run folder holds the LoRA files (diffusers/peft names), SAIM/BCM weights, dual_config.json,
dual_run.json, checkpoints/, train_log.jsonl and samples/step-N.png grids (whole | part | mask
per sample, real training pairs below). The last step's weights are the result: no checkpoint is
chosen by looking at test data.")]
pub struct Args {
    /// Base model: a diffusers folder (or a pretrained anodiff model folder).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Base model: a built-in preset with random weights (smoke runs only; see `anodiff presets`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the preset's random weights.
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// MVTec-layout category folder; training uses the few-shot split's training defects only.
    #[arg(long, conflicts_with_all = ["images", "masks"], requires = "defect")]
    pub dataset: Option<PathBuf>,
    /// Defect type (a folder under test/ and ground_truth/).
    #[arg(long)]
    pub defect: Option<String>,
    /// A split manifest from `anodiff split` (default: computed and saved as RUN/split.json).
    #[arg(long, requires = "dataset")]
    pub split: Option<PathBuf>,
    /// Your own defect photos (no dataset layout needed) ...
    #[arg(long, requires = "masks")]
    pub images: Option<PathBuf>,
    /// ... and their masks, matched by file stem (<stem>.png or <stem>_mask.png; white = defect).
    #[arg(long, requires = "images")]
    pub masks: Option<PathBuf>,
    /// Defect-free images for BCM's references at generation time (default with --dataset: train/good).
    #[arg(long)]
    pub good: Option<PathBuf>,
    /// Object masks for BCM's background images: `classical` (weight-free estimate) or `dir:PATH`.
    #[arg(long, default_value = "classical")]
    pub foreground: String,
    /// Sample geometry: `resize` (whole image squashed to --size, the paper) or `crop`
    /// (--size windows around the defect at native scale × --scale; for small defects).
    #[arg(long, default_value = "resize")]
    pub sampling: String,
    /// Sample side in pixels (default: the model's native size).
    #[arg(long)]
    pub size: Option<u32>,
    /// Scale applied before cropping (`--sampling crop`).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
    /// LoRA rank of the two UNet sets and the text-encoder set.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Without SAIM (ablation).
    #[arg(long)]
    pub no_saim: bool,
    /// Without BCM (ablation).
    #[arg(long)]
    pub no_bcm: bool,
    /// BCM fusion: `paper` (h + γ·MLP(h_ref), γ init 0.1) or `code` ((1−a)·h + a·MLP(h_ref), a init 0).
    #[arg(long, default_value = "paper")]
    pub fusion: String,
    /// Hidden width of BCM's MLP.
    #[arg(long, default_value_t = 320)]
    pub bcm_hidden: usize,
    /// Without the shared text-encoder LoRA.
    #[arg(long)]
    pub no_text_encoder_lora: bool,
    /// Prompt of the whole-image branch.
    #[arg(long, default_value = "a vfx with sks")]
    pub whole_prompt: String,
    /// Prompt of the anomaly-part branch.
    #[arg(long, default_value = "sks")]
    pub part_prompt: String,
    /// Optimiser updates (with --resume: the new total).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Pairs per update.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Compute each batch as this many equal micro-batches side by side, one per core (faster
    /// for small networks on 2+ cores; each micro-batch draws its own noise, so results depend
    /// on this number, never on the thread count). Must divide --batch.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// AdamW learning rate (constant after the warm-up). 2e-5 is the paper's for SD-1.5; small
    /// CPU-scale models trained from scratch need more (see BENCHMARKS.md).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Linear warm-up updates.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Probability that a pair trains the unconditional mode (empty prompts, all-zero BCM
    /// reference) that guidance needs. 0 as the paper (SD-1.5 has that mode); 0.1 for small models
    /// pretrained here, whose pretraining never saw an empty prompt.
    #[arg(long, default_value_t = 0.0)]
    pub prompt_dropout: f64,
    /// Extra weight of the defect's pixels in the whole-image loss: they count 1 + W times.
    /// 0 as the paper. At CPU scale a defect is ~1 % of a 64-px image and the whole branch
    /// learns the object instead of the defect; a weight makes it learn the defect
    /// (BENCHMARKS.md "DualAnoDiff learning at CPU scale").
    #[arg(long, default_value_t = 0.0)]
    pub mask_weight: f64,
    /// Guidance scale of the sample grids (1 = off).
    #[arg(long, default_value_t = 2.0)]
    pub sample_guidance: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// A sample grid every N updates (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub sample_every: usize,
    /// Pairs per sample grid.
    #[arg(long, default_value_t = 4)]
    pub sample_count: usize,
    /// DDIM steps of the grid samples.
    #[arg(long, default_value_t = 25)]
    pub sample_steps: usize,
    /// Seeds data order, noise and fresh weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue a run exactly from its latest checkpoint (its saved settings are used; only
    /// --steps may change).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

fn options(a: &Args) -> Result<DualTrainOptions> {
    let out = a.out.clone().context("--out is required")?;
    let model = ModelSource::choose(a.model.as_deref(), a.preset.as_deref(), a.weights_seed)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data = match (&a.dataset, &a.images, &a.masks) {
        (Some(ds), None, None) => {
            let defect = a.defect.clone().context("--dataset needs --defect TYPE")?;
            let manifest = match &a.split {
                Some(s) => s.clone(),
                None => {
                    let (d, report) = MvtecDataset::open(ds, OnBadFile::Error)
                        .with_context(|| format!("reading dataset {}", ds.display()))?;
                    for w in &report.warnings {
                        eprintln!("warning: {w}");
                    }
                    let path = out.join("split.json");
                    SplitManifest::few_shot(&d)?.save(&path)?;
                    path
                }
            };
            PairData::Split { manifest, defect }
        }
        (None, Some(images), Some(masks)) => PairData::Folders {
            images: images.clone(),
            masks: masks.clone(),
        },
        _ => bail!("give either --dataset DIR --defect TYPE or --images DIR --masks DIR"),
    };
    let size = match a.size {
        Some(s) => s,
        None => model.load(&candle_core::Device::Cpu)?.native_size() as u32,
    };
    let sampling = match a.sampling.as_str() {
        "resize" => Sampling::Resize { size, margin: 0 },
        "crop" => Sampling::DefectCrop {
            size,
            scale: a.scale,
        },
        other => bail!("--sampling {other}: expected `resize` or `crop`"),
    };
    let mut o = DualTrainOptions::paper(model, data, out);
    o.good = a.good.clone();
    o.foreground = a.foreground.clone();
    o.pairs = PairOptions {
        sampling,
        ..PairOptions::default()
    };
    o.config = DualConfig {
        whole_prompt: a.whole_prompt.clone(),
        part_prompt: a.part_prompt.clone(),
        rank: a.rank,
        text_encoder_lora: !a.no_text_encoder_lora,
        saim: !a.no_saim,
        bcm: !a.no_bcm,
        fusion: Fusion::parse(&a.fusion)?,
        bcm_hidden: a.bcm_hidden,
        seed: 0,
    };
    o.steps = a.steps.unwrap_or(5000);
    o.batch = a.batch;
    o.micro_batches = a.micro_batches;
    o.lr = a.lr;
    o.warmup = a.warmup;
    o.prompt_dropout = a.prompt_dropout;
    o.mask_weight = a.mask_weight;
    o.sample_guidance = a.sample_guidance;
    o.weight_decay = a.weight_decay;
    o.max_grad_norm = a.clip;
    o.checkpoint_every = a.checkpoint_every;
    o.sample_every = a.sample_every;
    o.sample_count = a.sample_count;
    o.sample_steps = a.sample_steps;
    o.seed = a.seed;
    Ok(o)
}

pub fn run(a: Args) -> Result<()> {
    let (o, resume) = match &a.resume {
        Some(dir) => {
            let mut o = read_run(dir)
                .with_context(|| format!("reading the run to resume in {}", dir.display()))?;
            if let Some(s) = a.steps {
                o.steps = s;
            }
            o.out = dir.clone();
            (o, Some(dir.clone()))
        }
        None => (options(&a)?, None),
    };
    let pb = bar(o.steps as u64, "dual-train");
    let pb2 = pb.clone();
    let r = dual_train(&o, resume.as_deref(), move |s| {
        pb2.set_position(s.step as u64);
        pb2.set_message(format!("dual-train, loss {:.4}", s.loss));
    })?;
    pb.finish_and_clear();
    println!(
        "{} pairs at {} px, {} trainable parameters; loss {:.4} (first update) -> {:.4} (mean of the last 20); {:.0} s",
        r.pairs, r.size, r.trainable_parameters, r.first_loss, r.last_loss, r.train_secs
    );
    for g in &r.grids {
        println!("sample grid: {}", g.display());
    }
    println!("run folder: {}", o.out.display());
    Ok(())
}
