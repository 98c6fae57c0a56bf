//! `scheduler/scheduler_config.json` as diffusers writes it. Unknown keys are ignored; missing keys
//! take diffusers' defaults.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub skip_prk_steps: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    /// DDPM variance type (`fixed_small` is SD's).
    pub variance_type: Option<String>,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion 1.5's training schedule.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: false,
            skip_prk_steps: true,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            variance_type: None,
        }
    }
}
