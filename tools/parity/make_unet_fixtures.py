#!/usr/bin/env python
"""Parity fixtures for anodiff's UNet2DConditionModel (crates/anodiff/src/sd/unet/).

Builds small random-weight diffusers UNets with the same configuration *shapes* as the real SD
checkpoints (fewer channels), saves each as a diffusers `unet/` folder and records noise
predictions for a few (latents, timesteps, encoder_hidden_states) cases.

  sd1/      SD-1.x style: 4 in-channels, attention_head_dim int, conv proj_in/proj_out, layers_per_block 2
  inpaint/  9 in-channels (SD inpainting), otherwise SD-1 shapes with layers_per_block 1 (smaller)
  sd2/      SD-2 style: use_linear_projection, attention_head_dim list (per-block head counts),
            transformer_layers_per_block 2, mid_block_scale_factor != 1
  sd1_bf16/ the sd1 weights rounded to and stored as bf16; references use the rounded weights

Each `<name>/cases.safetensors` holds `encoder_hidden_states [2, 77, cross]` and, per case k,
`sample_k`, `timesteps_k` (f32 [2]) and `out_k` (the diffusers noise prediction). Cases cover
t = 1, 500, 999, a batch with different non-integer timesteps per row, and an odd, non-square spatial size
(exercises the explicit upsample size). `<name>/attn_processors.txt` lists diffusers'
`attn_processors` keys (without the `.processor` suffix) in diffusers' order, one per line. Every parameter is randomised (diffusers zero-inits some and
norms start at 1/0), scaled so activations stay O(1).

Versions used: torch 2.15 (CPU), diffusers 0.42.1, safetensors, numpy.
Regenerate (from the repository root):
    python tools/parity/make_unet_fixtures.py
"""

import json
import math
import shutil
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "unet"

SD1 = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=[6, 8, 12],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=2,
    norm_eps=1e-5,
    cross_attention_dim=16,
    attention_head_dim=2,  # diffusers quirk: this is the number of heads
    flip_sin_to_cos=True,
    freq_shift=0,
)

INPAINT = dict(SD1, in_channels=9, layers_per_block=1)

SD2 = dict(
    SD1,
    layers_per_block=1,
    # Per-block head counts; distinct so a mirrored / non-reversed lookup in the up path or a
    # wrong mid-block entry changes the result (head counts do not change weight shapes).
    attention_head_dim=[1, 2, 4],
    use_linear_projection=True,
    cross_attention_dim=20,
    transformer_layers_per_block=2,
    mid_block_scale_factor=1.25,
)


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # GroupNorm / LayerNorm scale
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=gen))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


SPECS = [([1.0, 1.0], 16, 16), ([500.0, 500.0], 16, 16), ([999.0, 999.0], 16, 16),
         ([20.5, 700.25], 16, 16), ([250.0, 250.0], 10, 14)]


def cases(in_ch: int, gen: torch.Generator, specs):
    for ts, h, w in specs:
        yield torch.randn((2, in_ch, h, w), generator=gen), torch.tensor(ts, dtype=torch.float32)


def build(name: str, cfg: dict, seed: int, bf16: bool = False, specs=SPECS) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = UNet2DConditionModel(**cfg).eval()
    randomise(model, gen)
    if bf16:
        # Round once; the reference below runs on exactly the weights that are stored.
        model = model.to(torch.bfloat16).to(torch.float32)
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "unet").mkdir(parents=True)
    to_save = model.to(torch.bfloat16) if bf16 else model
    to_save.save_pretrained(folder / "unet", safe_serialization=True)
    model = model.to(torch.float32)

    ehs = torch.randn((2, 77, cfg["cross_attention_dim"]), generator=gen)
    tensors = {"encoder_hidden_states": ehs}
    with torch.no_grad():
        for k, (sample, ts) in enumerate(cases(cfg["in_channels"], gen, specs)):
            out = model(sample, ts, ehs).sample
            tensors[f"sample_{k}"] = sample
            tensors[f"timesteps_{k}"] = ts
            tensors[f"out_{k}"] = out.contiguous()
            print(f"{name} case {k}: t={ts.tolist()} {tuple(sample.shape)} max|out|={out.abs().max():.3f}")
    save_file(tensors, str(folder / "cases.safetensors"))
    keys = [k.removesuffix(".processor") for k in model.attn_processors]
    (folder / "attn_processors.txt").write_text("\n".join(keys) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters, config {json.loads((folder / 'unet' / 'config.json').read_text())['attention_head_dim']}")


def main() -> None:
    torch.manual_seed(0)
    build("sd1", SD1, seed=1)
    build("inpaint", INPAINT, seed=2)
    build("sd2", SD2, seed=3)
    build("sd1_bf16", SD1, seed=1, bf16=True, specs=SPECS[2:])
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total fixture size: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
