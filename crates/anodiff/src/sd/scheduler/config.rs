//! `scheduler/scheduler_config.json` as diffusers writes it. Each diffusers scheduler class saves
//! its own keys with its own defaults, so a key missing from the file takes the default of the class
//! named by `_class_name` (SD-1.5's values when there is no class name). Unknown keys are ignored;
//! known options anodiff does not implement are rejected by [`SchedulerConfig::validate`] instead of
//! being silently ignored. Saving ([`ConfigFile`]) writes every key of the named class, as
//! diffusers does, plus any other field whose value the class default would not restore.

use super::SchedulerKind;
use crate::error::{Error, Result};
use crate::sd::config_file::{config_object, diffusers_keys, ConfigFile};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How betas are spaced over the training timesteps (`beta_schedule`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Evenly spaced betas.
    Linear,
    /// Evenly spaced square roots of the betas (Stable Diffusion's).
    ScaledLinear,
    /// The cosine ᾱ schedule (Nichol & Dhariwal), betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the UNet predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε.
    Epsilon,
    /// v = √ᾱ·ε − √(1−ᾱ)·x0.
    VPrediction,
    /// The clean sample x0.
    Sample,
}

/// How inference timesteps are picked from the training ones (`timestep_spacing`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Multiples of the step ratio from 0, plus `steps_offset`.
    Leading,
    /// Counted down from the last training timestep.
    Trailing,
    /// Evenly spaced over [0, T−1], including both ends.
    Linspace,
}

/// Every scheduler setting anodiff reads (field names are diffusers' keys).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(from = "RawConfig")]
pub struct SchedulerConfig {
    /// Length T of the training schedule.
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// How betas go from `beta_start` to `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; replaces `beta_schedule` when present (diffusers' `trained_betas`).
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (ε, v or x0).
    pub prediction_type: PredictionType,
    /// Added to every `leading` timestep.
    pub steps_offset: usize,
    /// DDIM/PNDM: ᾱ past the last step is 1 instead of ᾱ_0.
    pub set_alpha_to_one: bool,
    /// PNDM: PLMS only (must be true).
    pub skip_prk_steps: bool,
    /// DDPM/DDIM: clamp the x0 estimate to ±`clip_sample_range`.
    pub clip_sample: bool,
    /// Bound of `clip_sample`.
    pub clip_sample_range: f64,
    /// How `set_timesteps` spaces the run's timesteps.
    pub timestep_spacing: TimestepSpacing,
    /// DDPM variance type (`fixed_small` is SD's; `None` means `fixed_small`).
    pub variance_type: Option<String>,
    /// Dynamic thresholding (DDPM/DDIM): not implemented, rejected when true.
    pub thresholding: bool,
    /// Dynamic-thresholding settings; only read when `thresholding` is on (rejected).
    pub dynamic_thresholding_ratio: f64,
    /// See `dynamic_thresholding_ratio`.
    pub sample_max_value: f64,
    /// Zero-terminal-SNR rescaling: not implemented, rejected when true.
    pub rescale_betas_zero_snr: bool,
    /// Euler: how inference sigmas are taken from the training sigmas (`linear` only).
    pub interpolation_type: String,
    /// Euler: Karras / exponential / beta sigma spacings (not implemented, rejected when true).
    pub use_karras_sigmas: bool,
    /// See `use_karras_sigmas`.
    pub use_exponential_sigmas: bool,
    /// See `use_karras_sigmas`.
    pub use_beta_sigmas: bool,
    /// Euler: bounds of the Karras / exponential / beta spacings (unused: those are rejected).
    pub sigma_min: Option<f64>,
    /// See `sigma_min`.
    pub sigma_max: Option<f64>,
    /// Euler: `discrete` only.
    pub timestep_type: String,
    /// Euler: the sigma after the last step, `zero` or `sigma_min`.
    pub final_sigmas_type: String,
    /// The diffusers class that wrote the file (`_class_name`), if any.
    #[serde(skip)]
    pub class_name: Option<String>,
    /// anodiff sampling option, not a diffusers config key: DDIM's eta (0 = deterministic).
    pub eta: f64,
    /// anodiff sampling options, not diffusers config keys: Euler's churn (diffusers' `step`
    /// arguments `s_churn`, `s_tmin`, `s_tmax`, `s_noise`). `s_churn = 0` is deterministic.
    pub s_churn: f64,
    /// Euler churn: lowest sigma it applies to.
    pub s_tmin: f64,
    /// Euler churn: highest sigma it applies to.
    pub s_tmax: f64,
    /// Euler churn: scale of the added noise.
    pub s_noise: f64,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion 1.5's training schedule.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: false,
            skip_prk_steps: true,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            variance_type: None,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            rescale_betas_zero_snr: false,
            interpolation_type: "linear".into(),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_type: "discrete".into(),
            final_sigmas_type: "zero".into(),
            class_name: None,
            eta: 0.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl SchedulerConfig {
    /// The defaults diffusers' class for `kind` uses for the keys it owns; SD-1.5's values
    /// ([`Default`]) for `None` and for keys the class does not have.
    pub fn class_defaults(kind: Option<SchedulerKind>) -> Self {
        let sd = Self::default();
        let base = Self {
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            steps_offset: 0,
            ..sd.clone()
        };
        match kind {
            None => sd,
            Some(SchedulerKind::Ddpm) => Self {
                clip_sample: true,
                variance_type: Some("fixed_small".into()),
                ..base
            },
            Some(SchedulerKind::Ddim) => Self {
                clip_sample: true,
                set_alpha_to_one: true,
                ..base
            },
            Some(SchedulerKind::Pndm) => Self {
                skip_prk_steps: false,
                ..base
            },
            Some(SchedulerKind::Euler) => Self {
                timestep_spacing: TimestepSpacing::Linspace,
                ..base
            },
        }
    }

    /// The scheduler named by `_class_name`, if it is one anodiff implements.
    pub fn class_kind(&self) -> Option<SchedulerKind> {
        self.class_name
            .as_deref()
            .and_then(SchedulerKind::from_class_name)
    }

    /// Rejects options that the scheduler `kind` would need but anodiff does not implement, so a
    /// config never silently produces different results from diffusers.
    pub fn validate(&self, kind: SchedulerKind) -> Result<()> {
        use SchedulerKind::*;
        let bad = |msg: String| Err(Error::invalid(format!("{kind:?} scheduler: {msg}")));
        if self.num_train_timesteps == 0 {
            return bad("num_train_timesteps must be > 0".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return bad(format!(
                    "trained_betas has {} values but num_train_timesteps is {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
        }
        if self.rescale_betas_zero_snr {
            return bad("rescale_betas_zero_snr is not supported".into());
        }
        if self.thresholding && matches!(kind, Ddpm | Ddim) {
            return bad("dynamic thresholding is not supported".into());
        }
        match kind {
            Ddpm => {
                let vt = self.variance_type.as_deref().unwrap_or("fixed_small");
                if !matches!(vt, "fixed_small" | "fixed_small_log" | "fixed_large") {
                    return bad(format!(
                        "variance_type `{vt}` is not supported (fixed_small, fixed_small_log, fixed_large)"
                    ));
                }
            }
            Ddim => {
                if self.eta.is_nan() || self.eta < 0.0 {
                    return bad(format!("eta must be >= 0, got {}", self.eta));
                }
            }
            Pndm => {
                if !self.skip_prk_steps {
                    return bad(
                        "PRK steps not supported: set skip_prk_steps = true (PLMS only, as Stable Diffusion uses)"
                            .into(),
                    );
                }
                if self.prediction_type == PredictionType::Sample {
                    return bad("prediction_type `sample` is not supported by PNDM".into());
                }
            }
            Euler => {
                if self.use_karras_sigmas || self.use_exponential_sigmas || self.use_beta_sigmas {
                    return bad("Karras / exponential / beta sigmas are not supported".into());
                }
                if self.interpolation_type != "linear" {
                    return bad(format!(
                        "interpolation_type `{}` is not supported (linear)",
                        self.interpolation_type
                    ));
                }
                if self.timestep_type != "discrete" {
                    return bad(format!(
                        "timestep_type `{}` is not supported (discrete)",
                        self.timestep_type
                    ));
                }
                if !matches!(self.final_sigmas_type.as_str(), "zero" | "sigma_min") {
                    return bad(format!(
                        "final_sigmas_type `{}` is not supported (zero, sigma_min)",
                        self.final_sigmas_type
                    ));
                }
                if [self.s_churn, self.s_noise]
                    .iter()
                    .any(|v| v.is_nan() || *v < 0.0)
                {
                    return bad("s_churn and s_noise must be >= 0".into());
                }
            }
        }
        Ok(())
    }
}

/// The keys every supported diffusers class writes.
const COMMON_KEYS: [&str; 7] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "steps_offset",
];

/// The keys the diffusers class of `kind` writes besides [`COMMON_KEYS`] (its other constructor
/// arguments), not counting `_class_name` and `_diffusers_version`.
fn class_keys(kind: SchedulerKind) -> &'static [&'static str] {
    match kind {
        SchedulerKind::Ddpm => &[
            "variance_type",
            "clip_sample",
            "thresholding",
            "dynamic_thresholding_ratio",
            "clip_sample_range",
            "sample_max_value",
            "timestep_spacing",
            "rescale_betas_zero_snr",
        ],
        SchedulerKind::Ddim => &[
            "clip_sample",
            "set_alpha_to_one",
            "thresholding",
            "dynamic_thresholding_ratio",
            "clip_sample_range",
            "sample_max_value",
            "timestep_spacing",
            "rescale_betas_zero_snr",
        ],
        SchedulerKind::Pndm => &["skip_prk_steps", "set_alpha_to_one", "timestep_spacing"],
        SchedulerKind::Euler => &[
            "interpolation_type",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "sigma_min",
            "sigma_max",
            "timestep_spacing",
            "timestep_type",
            "rescale_betas_zero_snr",
            "final_sigmas_type",
        ],
    }
}

impl ConfigFile for SchedulerConfig {
    const FILE_NAME: &'static str = "scheduler_config.json";

    /// The class's keys (all of them, as diffusers writes), and any other field that differs from
    /// the default the loader would fill in for it: anodiff's sampling options (`eta`, `s_churn`,
    /// …) and keys of other classes, which diffusers ignores. So `load(save(c)) == c` for every
    /// config, and a plain diffusers config saves to exactly diffusers' keys.
    fn to_json(&self) -> Value {
        let kind = self.class_kind();
        let is_class_key =
            |k: &str| kind.is_some_and(|c| COMMON_KEYS.contains(&k) || class_keys(c).contains(&k));
        let defaults = config_object(&Self::class_defaults(kind));
        let mut out: serde_json::Map<String, Value> = config_object(self)
            .into_iter()
            .filter(|(k, v)| is_class_key(k) || defaults.get(k) != Some(v))
            .collect();
        if let Some(class) = &self.class_name {
            for (k, v) in diffusers_keys(class) {
                out.insert(k.into(), v);
            }
        }
        Value::Object(out)
    }
}

/// The file as written: every key optional, so missing keys can take the class's default.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<BetaSchedule>,
    trained_betas: Option<Vec<f64>>,
    prediction_type: Option<PredictionType>,
    steps_offset: Option<usize>,
    set_alpha_to_one: Option<bool>,
    skip_prk_steps: Option<bool>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    timestep_spacing: Option<TimestepSpacing>,
    variance_type: Option<String>,
    thresholding: Option<bool>,
    dynamic_thresholding_ratio: Option<f64>,
    sample_max_value: Option<f64>,
    rescale_betas_zero_snr: Option<bool>,
    interpolation_type: Option<String>,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    timestep_type: Option<String>,
    final_sigmas_type: Option<String>,
    eta: Option<f64>,
    s_churn: Option<f64>,
    s_tmin: Option<f64>,
    s_tmax: Option<f64>,
    s_noise: Option<f64>,
}

impl From<RawConfig> for SchedulerConfig {
    fn from(r: RawConfig) -> Self {
        let kind = r
            .class_name
            .as_deref()
            .and_then(SchedulerKind::from_class_name);
        let d = SchedulerConfig::class_defaults(kind);
        Self {
            num_train_timesteps: r.num_train_timesteps.unwrap_or(d.num_train_timesteps),
            beta_start: r.beta_start.unwrap_or(d.beta_start),
            beta_end: r.beta_end.unwrap_or(d.beta_end),
            beta_schedule: r.beta_schedule.unwrap_or(d.beta_schedule),
            trained_betas: r.trained_betas.or(d.trained_betas),
            prediction_type: r.prediction_type.unwrap_or(d.prediction_type),
            steps_offset: r.steps_offset.unwrap_or(d.steps_offset),
            set_alpha_to_one: r.set_alpha_to_one.unwrap_or(d.set_alpha_to_one),
            skip_prk_steps: r.skip_prk_steps.unwrap_or(d.skip_prk_steps),
            clip_sample: r.clip_sample.unwrap_or(d.clip_sample),
            clip_sample_range: r.clip_sample_range.unwrap_or(d.clip_sample_range),
            timestep_spacing: r.timestep_spacing.unwrap_or(d.timestep_spacing),
            variance_type: r.variance_type.or(d.variance_type),
            thresholding: r.thresholding.unwrap_or(d.thresholding),
            dynamic_thresholding_ratio: r
                .dynamic_thresholding_ratio
                .unwrap_or(d.dynamic_thresholding_ratio),
            sample_max_value: r.sample_max_value.unwrap_or(d.sample_max_value),
            rescale_betas_zero_snr: r.rescale_betas_zero_snr.unwrap_or(d.rescale_betas_zero_snr),
            interpolation_type: r.interpolation_type.unwrap_or(d.interpolation_type),
            use_karras_sigmas: r.use_karras_sigmas.unwrap_or(d.use_karras_sigmas),
            use_exponential_sigmas: r.use_exponential_sigmas.unwrap_or(d.use_exponential_sigmas),
            use_beta_sigmas: r.use_beta_sigmas.unwrap_or(d.use_beta_sigmas),
            sigma_min: r.sigma_min.or(d.sigma_min),
            sigma_max: r.sigma_max.or(d.sigma_max),
            timestep_type: r.timestep_type.unwrap_or(d.timestep_type),
            final_sigmas_type: r.final_sigmas_type.unwrap_or(d.final_sigmas_type),
            class_name: r.class_name,
            eta: r.eta.unwrap_or(d.eta),
            s_churn: r.s_churn.unwrap_or(d.s_churn),
            s_tmin: r.s_tmin.unwrap_or(d.s_tmin),
            s_tmax: r.s_tmax.unwrap_or(d.s_tmax),
            s_noise: r.s_noise.unwrap_or(d.s_noise),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_loads_back_equal_and_writes_the_class_keys() {
        let dir = std::env::temp_dir().join(format!("anodiff-sched-cfg-{}", std::process::id()));
        let kinds = [
            SchedulerKind::Ddpm,
            SchedulerKind::Ddim,
            SchedulerKind::Pndm,
            SchedulerKind::Euler,
        ];
        for kind in kinds {
            let class = Some(kind.class_name().to_string());
            let plain = SchedulerConfig {
                class_name: class.clone(),
                ..SchedulerConfig::class_defaults(Some(kind))
            };
            // Non-default values of other classes' keys and of anodiff's sampling options.
            let odd = SchedulerConfig {
                class_name: class,
                eta: 0.3,
                s_tmax: 80.0,
                use_karras_sigmas: true,
                skip_prk_steps: false,
                variance_type: Some("fixed_large".into()),
                trained_betas: Some(vec![0.01, 0.02]),
                num_train_timesteps: 2,
                ..SchedulerConfig::default()
            };
            for c in [plain, odd, SchedulerConfig::default()] {
                c.save_config(&dir).unwrap();
                assert_eq!(SchedulerConfig::load_config(&dir).unwrap(), c, "{kind:?}");
            }
            let plain = SchedulerConfig {
                class_name: Some(kind.class_name().into()),
                ..SchedulerConfig::class_defaults(Some(kind))
            };
            let Value::Object(m) = plain.to_json() else {
                panic!()
            };
            let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = [&COMMON_KEYS[..], class_keys(kind)].concat();
            want.extend(["_class_name", "_diffusers_version"]);
            keys.sort();
            want.sort();
            assert_eq!(keys, want, "{kind:?}");
        }
        // Without a class name only what differs from SD-1.5's defaults is written.
        let v = SchedulerConfig {
            beta_end: 0.02,
            ..SchedulerConfig::default()
        }
        .to_json();
        assert_eq!(v, serde_json::json!({"beta_end": 0.02}));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_keys_take_the_writing_class_defaults() {
        let c: SchedulerConfig =
            serde_json::from_str(r#"{"_class_name":"DDIMScheduler"}"#).unwrap();
        assert!(c.set_alpha_to_one && c.clip_sample);
        assert_eq!(c.beta_schedule, BetaSchedule::Linear);
        assert_eq!(c.class_kind(), Some(SchedulerKind::Ddim));
        let c: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name":"EulerDiscreteScheduler","trained_betas":null,"foo":3}"#,
        )
        .unwrap();
        assert_eq!(c.timestep_spacing, TimestepSpacing::Linspace);
        let c: SchedulerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(c.steps_offset, 1);
        assert!(c.class_kind().is_none());
    }

    #[test]
    fn unsupported_options_are_rejected() {
        let c: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name":"EulerDiscreteScheduler","use_karras_sigmas":true}"#,
        )
        .unwrap();
        assert!(c.validate(SchedulerKind::Euler).is_err());
        // Euler-only keys do not matter to DDIM (diffusers' from_config ignores them too).
        assert!(c.validate(SchedulerKind::Ddim).is_ok());
        let e = SchedulerConfig {
            skip_prk_steps: false,
            ..Default::default()
        }
        .validate(SchedulerKind::Pndm)
        .unwrap_err()
        .to_string();
        assert!(e.contains("PRK steps not supported"), "{e}");
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = serde_json::from_str::<SchedulerConfig>(r#"{"beta_schedule":"cosine"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant `cosine`") && e.contains("scaled_linear"),
            "{e}"
        );
        let e = serde_json::from_str::<SchedulerConfig>(r#"{"num_train_timesteps":"many"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
        let cfg = SchedulerConfig {
            trained_betas: Some(vec![0.1; 3]),
            ..Default::default()
        };
        let e = cfg.validate(SchedulerKind::Ddim).unwrap_err().to_string();
        assert!(e.contains("trained_betas has 3 values"), "{e}");
    }
}
