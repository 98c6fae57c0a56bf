//! [`ModelParams`]: the parameter stores a loaded or fresh model's components were built from —
//! what training collects `Var`s from and what `StableDiffusion::save` writes.

use crate::nn::Params;
use candle_core::Var;

/// The parameter stores a model's components were built from. Saving reads the weights from
/// their `vars()`, so every weight must be a trainable `Var`: true for fresh stores (training
/// from scratch) and for loaded stores made trainable with `with_trainable(|_| true)`.
#[derive(Clone)]
pub struct ModelParams {
    /// The text encoder's store (names under `text_model.`).
    pub text_encoder: Params,
    /// The UNet's store.
    pub unet: Params,
    /// The VAE's store; `None` for a pixel-space model.
    pub vae: Option<Params>,
}

impl ModelParams {
    /// Every trainable variable, named `text_encoder.…`, `unet.…`, `vae.…` (the names training
    /// checkpoints use).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let stores = [
            ("text_encoder", Some(&self.text_encoder)),
            ("unet", Some(&self.unet)),
            ("vae", self.vae.as_ref()),
        ];
        stores
            .into_iter()
            .filter_map(|(c, p)| p.map(|p| (c, p)))
            .flat_map(|(c, p)| {
                p.vars()
                    .into_iter()
                    .map(move |(n, v)| (format!("{c}.{n}"), v))
            })
            .collect()
    }
}
