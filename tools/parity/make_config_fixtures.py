#!/usr/bin/env python3
"""Config fixtures for anodiff's config writers (`ConfigFile::save_config` in crates/anodiff/src/sd/).

Builds configs in diffusers / transformers and saves them the way those libraries save them
(`save_config` / `save_pretrained`); no weights are written. The Rust test
crates/anodiff/tests/config_roundtrip.rs loads each one, saves it again and compares; the reverse
direction (diffusers reading what anodiff writes) is tools/parity/check_config_roundtrip.py.

Writes tests/fixtures/configs/<kind>/<name>/<file>:
  unet/{sd15,sd2,inpaint,custom}/config.json           UNet2DConditionModel (built on the meta device)
      sd15     runwayml/stable-diffusion-v1-5's UNet: cross 768, 8 heads
      sd2      stabilityai/stable-diffusion-2-base's: linear projection, attention_head_dim list
      inpaint  the SD-1.5 inpainting UNet: 9 input channels
      custom   small, with most options away from their defaults (lists per block, no mid block,
               other kernels, eps, frequency shift, dropout, upcast_attention)
  vae/{sd15,custom}/config.json                        AutoencoderKL
  text_encoder/{sd1,sd2}/config.json                   transformers CLIPTextConfig with
      architectures ["CLIPTextModel"]: SD-1's ViT-L/14 (quick_gelu, legacy eos id 2) and SD-2's
      OpenCLIP-H text tower (gelu, 23 layers)
  scheduler/<class>_{default,sd15}/scheduler_config.json  DDPM, DDIM, PNDM, Euler with their
      constructor defaults and with Stable Diffusion 1.5's schedule; plus ddpm_trained_betas
      (explicit betas), ddim_vpred (v-prediction, trailing spacing), euler_sigma_min
      (final_sigmas_type sigma_min)

Versions: torch 2.15.0 (CPU), diffusers 0.42.1, transformers 5.23.0.
Regenerate from the repository root:
    python tools/parity/make_config_fixtures.py
"""
import inspect
import shutil
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, UNet2DConditionModel)
from transformers import CLIPTextConfig

assert diffusers.__version__ == "0.42.1", diffusers.__version__
assert transformers.__version__ == "5.23.0", transformers.__version__
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "configs"

UNETS = {
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                use_linear_projection=True),
    "inpaint": dict(sample_size=64, in_channels=9, cross_attention_dim=768, attention_head_dim=8),
    "custom": dict(
        sample_size=32, in_channels=3, out_channels=3, center_input_sample=True,
        flip_sin_to_cos=False, freq_shift=1, block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], mid_block_type=None,
        layers_per_block=[1, 2], transformer_layers_per_block=[2, 1], downsample_padding=0,
        mid_block_scale_factor=1.5, norm_num_groups=8, norm_eps=1e-6, cross_attention_dim=[64, 64],
        attention_head_dim=[2, 4], conv_in_kernel=5, conv_out_kernel=1, upcast_attention=True,
        dropout=0.1),
}

VAES = {
    "sd15": dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, sample_size=512),
    "custom": dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8, latent_channels=8,
                   sample_size=(64, 96), scaling_factor=0.13025, shift_factor=0.0609,
                   force_upcast=False, use_quant_conv=False, mid_block_add_attention=False,
                   latents_mean=[0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.25, 0.125],
                   latents_std=[1.0, 0.9, 1.1, 1.2, 0.8, 1.0, 1.0, 0.95]),
}

TEXT_ENCODERS = {
    # openai/clip-vit-large-patch14's text tower as SD-1.x ships it (bos 0 / eos 2 are the legacy ids
    # of that config.json).
    "sd1": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    # OpenCLIP ViT-H/14's text tower without its last layer, as SD-2.x ships it.
    "sd2": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                projection_dim=512, bos_token_id=0, eos_token_id=2, pad_token_id=1),
}

SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                     beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                     clip_sample=False, skip_prk_steps=True)
SCHEDULER_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler,
                     "euler": EulerDiscreteScheduler}
SCHEDULERS = {
    **{f"{k}_default": (cls, {}) for k, cls in SCHEDULER_CLASSES.items()},
    **{f"{k}_sd15": (cls, SD15_SCHEDULE) for k, cls in SCHEDULER_CLASSES.items()},
    "ddpm_trained_betas": (DDPMScheduler, dict(num_train_timesteps=10, variance_type="fixed_large",
                                               trained_betas=[0.01 * (i + 1) for i in range(10)])),
    "ddim_vpred": (DDIMScheduler, dict(SD15_SCHEDULE, prediction_type="v_prediction",
                                       timestep_spacing="trailing", clip_sample=True,
                                       clip_sample_range=2.5)),
    "euler_sigma_min": (EulerDiscreteScheduler, dict(SD15_SCHEDULE, final_sigmas_type="sigma_min",
                                                     timestep_spacing="leading")),
}


def fresh(folder):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def class_kwargs(cls, kwargs):
    """Only the keys `cls` takes (the shared SD schedule has keys some classes do not have)."""
    keys = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in kwargs.items() if k in keys}


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    # Models are built on the meta device: only their registered configs are needed.
    with torch.device("meta"):
        for name, kw in UNETS.items():
            UNet2DConditionModel(**kw).save_config(fresh(OUT / "unet" / name))
        for name, kw in VAES.items():
            AutoencoderKL(**kw).save_config(fresh(OUT / "vae" / name))
    for name, kw in TEXT_ENCODERS.items():
        cfg = CLIPTextConfig(**kw)
        cfg.architectures = ["CLIPTextModel"]
        cfg.save_pretrained(fresh(OUT / "text_encoder" / name))
    for name, (cls, kw) in SCHEDULERS.items():
        cls(**class_kwargs(cls, kw)).save_config(fresh(OUT / "scheduler" / name))
    files = sorted(p.relative_to(OUT) for p in OUT.rglob("*.json"))
    print(f"wrote {len(files)} configs under {OUT}")
    for f in files:
        print("  ", f)


if __name__ == "__main__":
    main()
