//! A component's JSON config file, read and written the way diffusers / transformers do: the
//! config types ([`UNetConfig`](super::unet::UNetConfig), [`VaeConfig`](super::vae::VaeConfig),
//! [`ClipTextConfig`](super::clip::ClipTextConfig),
//! [`SchedulerConfig`](super::scheduler::SchedulerConfig)) implement [`ConfigFile`], so every one
//! of them loads from and saves to its component folder through the same two functions.
//!
//! The written JSON has the keys the reference library writes (sorted, two-space indent, final
//! newline, as Python's `json.dumps(..., indent=2, sort_keys=True)`); numbers are spelled by
//! serde (`1e-5` where Python writes `1e-05`), which parses to the same values.

use crate::error::Result;
use crate::io::json::{read_json, write_json};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The diffusers release whose config format is written (`_diffusers_version`): the one the
/// parity fixtures were generated with.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The transformers release whose config format is written (`transformers_version`).
pub const TRANSFORMERS_VERSION: &str = "5.23.0";

/// A config stored as one JSON file in a component folder.
pub trait ConfigFile: DeserializeOwned {
    /// The file name inside the component folder (`config.json`, `scheduler_config.json`).
    const FILE_NAME: &'static str;

    /// The JSON object diffusers / transformers would write for this config.
    fn to_json(&self) -> Value;

    /// Reads `dir/FILE_NAME`; keys missing from the file take the reference library's defaults.
    fn load_config(dir: &Path) -> Result<Self> {
        read_json(&dir.join(Self::FILE_NAME))
    }

    /// Writes `dir/FILE_NAME` atomically (creating `dir`), and returns the file's path.
    fn save_config(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(Self::FILE_NAME);
        write_json(&path, &self.to_json())?;
        Ok(path)
    }
}

/// `cfg` serialised as a JSON object (field names are the reference library's keys).
pub(crate) fn config_object(cfg: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(cfg) {
        Ok(Value::Object(m)) => m,
        // Config types are structs of numbers, strings and lists: this cannot happen.
        other => panic!("a config did not serialise to a JSON object: {other:?}"),
    }
}

/// [`config_object`] with `extra` keys added (e.g. diffusers' `_class_name`), as a JSON value.
pub(crate) fn config_json(cfg: &impl Serialize, extra: &[(&str, Value)]) -> Value {
    let mut m = config_object(cfg);
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

/// The two keys diffusers adds to every config it saves: the class that wrote it and the version.
pub(crate) fn diffusers_keys(class_name: &str) -> [(&'static str, Value); 2] {
    [
        ("_class_name", class_name.into()),
        ("_diffusers_version", DIFFUSERS_VERSION.into()),
    ]
}
