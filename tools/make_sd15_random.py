#!/usr/bin/env python3
"""Writes a random-weight Stable Diffusion 1.5 folder with the EXACT SD-1.5 configs (UNet 320/640/1280/1280,
VAE 128/256/512/512, CLIP ViT-L/14 text encoder) plus reference outputs, for the full-size parity test
(`cargo test --release --test full_size_sd15 -- --ignored`) and a diffusers timing of one UNet step.

Versions: torch 2.15.0, diffusers 0.42.1, transformers 5.23.0.
Usage: python tools/make_sd15_random.py [OUT_DIR]   (default: runs/sd15-random, git-ignored; ~4.3 GB)
Copies the CLIP vocabulary from crates/anodiff/assets/clip.
"""
import json
import os
import shutil
import statistics
import sys
import time

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "runs", "sd15-random")
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)

UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
            freq_shift=0, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32,
            norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512)
CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
            bos_token_id=0, eos_token_id=2, pad_token_id=1)


def save(model, sub, fname):
    d = os.path.join(OUT, sub)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(d, fname))
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, default=str)


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    os.makedirs(OUT, exist_ok=True)
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    te = CLIPTextModel(CLIPTextConfig(**CLIP)).eval()
    with torch.no_grad():  # diffusers zero-inits conv_out etc.; make every output path non-trivial
        for m in (unet, vae):
            for n, p in m.named_parameters():
                if p.abs().max() == 0 or n.endswith("norm.weight"):
                    p.add_(0.05 * torch.randn_like(p))
    save(unet, "unet", "diffusion_pytorch_model.safetensors")
    save(vae, "vae", "diffusion_pytorch_model.safetensors")
    save(te, "text_encoder", "model.safetensors")
    tok = os.path.join(OUT, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROOT, "crates", "anodiff", "assets", "clip", f), tok)
    PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False).save_config(os.path.join(OUT, "scheduler"))
    with open(os.path.join(OUT, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline"}, f)

    g = torch.Generator().manual_seed(1)
    ref, timings = {}, {}
    ids = torch.randint(0, 49406, (2, 77), generator=g)
    ids[:, 0] = 49406
    ids[0, 10:] = 49407
    ids[1, 30:] = 49407
    with torch.no_grad():
        enc = te(ids).last_hidden_state
        ref["clip.ids"] = ids.to(torch.int64)
        ref["clip.last_hidden"] = enc
        for size in (256, 512):
            lat = torch.randn((2, 4, size // 8, size // 8), generator=g)
            t = torch.tensor([500.0, 500.0])
            out = unet(lat, t, encoder_hidden_states=enc).sample
            ref[f"unet{size}.latents"] = lat
            ref[f"unet{size}.out"] = out
            timings[f"unet_fwd_{size}_b2_s"] = timed(lambda: unet(lat, t, encoder_hidden_states=enc), 3 if size == 256 else 1)
        z = torch.randn((1, 4, 32, 32), generator=g)
        ref["vae.z"] = z
        ref["vae.decoded"] = vae.decode(z).sample
    ref["clip.ids"] = ref["clip.ids"].float()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    timings["threads"] = torch.get_num_threads()
    timings["torch"] = torch.__version__
    with open(os.path.join(OUT, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
