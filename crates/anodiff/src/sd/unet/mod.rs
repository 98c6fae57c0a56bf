//! UNet2DConditionModel (in progress).
