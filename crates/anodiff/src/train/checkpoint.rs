//! Training checkpoints: everything needed to continue a run bit-exactly.
//!
//! ```text
//! <run>/checkpoints/step-00000120/
//!     weights.safetensors     trainable tensors by full name (f32)
//!     optimizer.safetensors   exp_avg.<name>, exp_avg_sq.<name>
//!     state.json              step, per-variable AdamW step counts, data order (seed, epoch, pos)
//!     config.json             the training configuration + caller metadata
//! <run>/checkpoints/LATEST    name of the newest complete checkpoint directory
//! ```
//! A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed
//! into place; only then is `LATEST` replaced (atomically) and older checkpoints removed, so a
//! crash at any point leaves the previous good checkpoint usable.

use super::optim::AdamW;
use super::order::DataOrder;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::io::json::{read_json, write_json};
use crate::nn::tensor_files::{read_safetensors, write_safetensors};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout; a checkpoint of another version is refused.
pub const FORMAT_VERSION: u32 = 1;
const LATEST: &str = "LATEST";

/// The resumable state of a run (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Completed optimiser updates.
    pub step: usize,
    /// AdamW step count per variable.
    pub adam_steps: HashMap<String, u64>,
    /// Where the data order stands.
    pub data_order: DataOrder,
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: CheckpointState,
    /// Its `config.json` (training configuration + caller metadata).
    pub config: serde_json::Value,
    /// Trainable tensors by full name.
    pub weights: HashMap<String, Tensor>,
    /// AdamW moments (`exp_avg.<name>`, `exp_avg_sq.<name>`).
    pub optimizer: HashMap<String, Tensor>,
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes a checkpoint of the optimiser's variables and state under `<run>/checkpoints/`, points
/// `LATEST` at it and keeps the newest `keep` (at least 1) checkpoint directories.
pub fn save(
    run_dir: &Path,
    step: usize,
    opt: &AdamW,
    order: &DataOrder,
    config: &serde_json::Value,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = step_dir_name(step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let write = || -> Result<()> {
        let weights: Vec<(String, Tensor)> = opt
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect();
        write_safetensors(&tmp.join("weights.safetensors"), &weights)?;
        write_safetensors(&tmp.join("optimizer.safetensors"), &opt.state_tensors()?)?;
        write_json(&tmp.join("config.json"), config)?;
        let state = CheckpointState {
            format: FORMAT_VERSION,
            step,
            adam_steps: opt.state_steps().into_iter().collect(),
            data_order: order.clone(),
        };
        write_json(&tmp.join("state.json"), &state)?;
        fsync_dir(&tmp)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = root.join(&name);
    if dest.exists() {
        // Same step saved again (e.g. a resumed run's final save): swap the old one out first.
        let old = root.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    }
    fsync_dir(&root)?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(&root, &name, keep.max(1))?;
    Ok(dest)
}

/// Removes all but the newest `keep` step directories (never `current`).
fn prune(root: &Path, current: &str, keep: usize) -> Result<()> {
    let mut steps = list_steps(root)?;
    steps.sort();
    let n = steps.len();
    for s in steps.into_iter().take(n.saturating_sub(keep)) {
        if s != current {
            let p = root.join(&s);
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

fn list_steps(root: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect())
}

/// The checkpoint directory meant by `dir`: a checkpoint itself (has `state.json`), a
/// `checkpoints/` folder or a run directory (both followed through `LATEST`).
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    for root in [dir.to_path_buf(), dir.join("checkpoints")] {
        let latest = root.join(LATEST);
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
            let d = root.join(name.trim());
            if d.join("state.json").is_file() {
                return Ok(d);
            }
            return Err(Error::config(
                &latest,
                format!(
                    "points at `{}`, which is not a complete checkpoint",
                    name.trim()
                ),
            ));
        }
    }
    Err(Error::config(
        dir,
        "not a checkpoint (no state.json) and no checkpoints/LATEST to follow",
    ))
}

/// The newest checkpoint of a run directory, if it has one.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    resolve(&run_dir.join("checkpoints")).ok()
}

/// Reads a checkpoint (`dir` as accepted by [`resolve`]).
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve(dir)?;
    let state_path = dir.join("state.json");
    let state: CheckpointState = read_json(&state_path)?;
    if state.format != FORMAT_VERSION {
        return Err(Error::config(
            &state_path,
            format!(
                "checkpoint format {} (this build reads {FORMAT_VERSION})",
                state.format
            ),
        ));
    }
    let config = read_json(&dir.join("config.json"))?;
    let map = |name: &str| -> Result<HashMap<String, Tensor>> {
        Ok(read_safetensors(&dir.join(name), device)?
            .into_iter()
            .collect())
    };
    Ok(Checkpoint {
        weights: map("weights.safetensors")?,
        optimizer: map("optimizer.safetensors")?,
        state,
        config,
        dir,
    })
}
