//! The folder layout of one evaluation run (`anodiff bench localisation`, or any detector whose
//! output is evaluated): one place that names every file, so the bench, `anodiff eval` and
//! `anodiff report` agree.

use std::path::PathBuf;

/// Paths of the files of one run folder.
#[derive(Debug, Clone)]
pub struct RunLayout {
    /// The run folder.
    pub root: PathBuf,
}

impl RunLayout {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// What was run: dataset, source, seed, protocol, wall times (free-form JSON object).
    pub fn info(&self) -> PathBuf {
        self.root.join("run.json")
    }
    /// The few-shot split used.
    pub fn split(&self) -> PathBuf {
        self.root.join("split.json")
    }
    /// `PRED/<defect>/<stem>.npy` + `PRED/scores.csv`.
    pub fn predictions(&self) -> PathBuf {
        self.root.join("predictions")
    }
    /// The evaluation report (`anodiff eval`'s JSON).
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }
    /// Trainer output: checkpoints, `train_log.jsonl`, final weights.
    pub fn train_dir(&self) -> PathBuf {
        self.root.join("train")
    }
    /// Optional: what a reconstruction-based detector (AnomalySD) repainted each evaluation image
    /// as, `normal/<defect>/<stem>.png`; the report shows it beside the map when present.
    pub fn normal_images(&self) -> PathBuf {
        self.root.join("normal")
    }
    /// The report page.
    pub fn report_html(&self) -> PathBuf {
        self.root.join("report.html")
    }
    /// PNGs the report shows.
    pub fn report_assets(&self) -> PathBuf {
        self.root.join("report")
    }
}
