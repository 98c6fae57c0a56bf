#!/usr/bin/env python3
"""Parity fixtures for anodiff::sd::vae (diffusers AutoencoderKL as used by SD-1.x/2.x).

Builds two small random-weight AutoencoderKL models with SD's structure (DownEncoderBlock2D /
UpDecoderBlock2D, mid-block attention, quant/post-quant convs) but few channels, saves each as a
diffusers `vae/` folder, and records reference outputs:

  tests/fixtures/vae/<case>/vae/{config.json, diffusion_pytorch_model.safetensors}   (f32)
  tests/fixtures/vae/<case>/reference.safetensors
      image   [B,3,H,W]  encoder input in [-1, 1]
      mean, logvar       posterior moments (logvar clamped to [-30, 20])
      noise, sample      sample = mean + exp(0.5*logvar) * noise
      latent  [B,4,h,w]  decoder input (unscaled latent)
      decoded [B,3,H,W]  decode(latent)

Cases:
  two_blocks   block_out_channels [16, 32], layers_per_block 1, 8 groups, image [2,3,32,32],
               non-square decoder latent [2,4,4,6]; scaling_factor 0.18215 (SD-1.x)
  three_blocks block_out_channels [8, 16, 16], layers_per_block 2, 4 groups, non-square image
               [2,3,24,32] (exercises the Downsample/Upsample chain and H != W);
               scaling_factor 0.13025 so a test can tell it was read from config.json

Every parameter is randomised, including GroupNorm affine parameters and biases (diffusers
initialises some to 1/0, which would hide a missing affine or bias).

Versions: torch 2.15.0, diffusers 0.42.1, safetensors (venv).
Regenerate: python tools/parity/make_vae_fixtures.py
"""
import os
import shutil

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "vae")

CASES = {
    "two_blocks": dict(
        cfg=dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8),
        image=(2, 3, 32, 32),
        latent_hw=(4, 6),
        scaling_factor=0.18215,
    ),
    "three_blocks": dict(
        cfg=dict(block_out_channels=[8, 16, 16], layers_per_block=2, norm_num_groups=4),
        image=(2, 3, 24, 32),
        latent_hw=None,
        scaling_factor=0.13025,
    ),
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrites every parameter so norms and biases are not the identity/zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                # Slightly above PyTorch's default scale so activations stay O(1) through the stack.
                p.copy_(torch.randn(p.shape, generator=gen) * (1.2 / fan_in**0.5))


def make_case(name: str, spec: dict, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_blocks = len(spec["cfg"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n_blocks,
        up_block_types=["UpDecoderBlock2D"] * n_blocks,
        act_fn="silu",
        latent_channels=4,
        sample_size=32,
        scaling_factor=spec["scaling_factor"],
        **spec["cfg"],
    ).eval()
    randomise(vae, gen)

    case_dir = os.path.join(OUT, name)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    vae.save_pretrained(os.path.join(case_dir, "vae"), safe_serialization=True)

    b, _, h, w = spec["image"]
    f = 2 ** (n_blocks - 1)
    image = torch.rand(spec["image"], generator=gen) * 2.0 - 1.0
    noise = torch.randn((b, 4, h // f, w // f), generator=gen)
    lh, lw = spec["latent_hw"] or (h // f, w // f)
    latent = torch.randn((b, 4, lh, lw), generator=gen) * 2.0
    with torch.no_grad():
        post = vae.encode(image).latent_dist
        sample = post.mean + post.std * noise
        decoded = vae.decode(latent).sample
    refs = dict(image=image, mean=post.mean, logvar=post.logvar, noise=noise, sample=sample,
                latent=latent, decoded=decoded)
    save_file({k: v.contiguous().float() for k, v in refs.items()},
              os.path.join(case_dir, "reference.safetensors"))
    for k, v in refs.items():
        print(f"{name}: {k:8s} {tuple(v.shape)} max|x| = {v.abs().max().item():.4g}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for i, (name, spec) in enumerate(CASES.items()):
        make_case(name, spec, seed=1234 + i)
