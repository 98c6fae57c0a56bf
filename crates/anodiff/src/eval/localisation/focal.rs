//! Focal loss (Lin et al.) on a 2-class softmax, as DRAEM trains its discriminative network:
//! `FL = −(1 − p_t)^γ · log p_t`, averaged over pixels. `log p_t` comes from an exact log-softmax
//! (max-shifted), so DRAEM's `+1e-5` smoothing against `log 0` is not needed. Built from
//! differentiable candle ops; the focusing weight is not detached (as in the reference).

use candle_core::{Tensor, D};

/// `logits: [B, 2, H, W]`, `target: [B, 1, H, W]` or `[B, H, W]` with values in {0, 1}
/// (1 = anomalous). Returns the scalar mean loss.
pub fn focal_loss(logits: &Tensor, target: &Tensor, gamma: f64) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = logits.dims4()?;
    if c != 2 {
        candle_core::bail!(
            "focal loss: expected 2 logit channels, got shape {:?}",
            logits.dims()
        );
    }
    let t = target.reshape((b, 1, h, w))?.to_dtype(logits.dtype())?;
    let one_hot = Tensor::cat(&[&t.affine(-1.0, 1.0)?, &t], 1)?;
    // log-softmax over the class dim; the shift is detached (softmax is shift-invariant).
    let m = logits.max_keepdim(1)?.detach();
    let z = logits.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(1)?.log()?;
    let log_p = z.broadcast_sub(&lse)?;
    let log_pt = (log_p * one_hot)?.sum(1)?;
    let pt = log_pt.exp()?;
    let one_minus = pt.affine(-1.0, 1.0)?;
    let weight = if gamma == 0.0 {
        one_minus.ones_like()?
    } else if gamma == 2.0 {
        one_minus.sqr()?
    } else {
        // Clamp at 0 from below: 1 − p_t can round to a tiny negative value.
        one_minus.relu()?.powf(gamma)?
    };
    (weight * log_pt)?.neg()?.flatten_all()?.mean(D::Minus1)
}
