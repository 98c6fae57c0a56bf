#!/usr/bin/env python3
"""Full-pipeline parity fixtures: complete 4-step txt2img runs with classifier-free guidance for each
scheduler (DDPM, DDIM, DDIM eta=0.5, PNDM, Euler), a 4-step inpainting run, and partial-denoising
inpainting runs (StableDiffusionInpaintPipeline with strength < 1) for DDPM, DDIM, PNDM and Euler at
two strengths: `inpaint05_<scheduler>` (strength 0.5, 6 steps, the last 3 kept) and
`inpaint03_<scheduler>` (strength 0.3, 10 steps, the last int(10 * 0.3) = 3 kept), on a tiny
random-weight Stable Diffusion with the real architecture classes. The 9-channel UNet
(unet_inpaint/) is also what crates/anodiff/tests/parity_pipeline.rs runs a batch of grid-cell
masks through (`inpaint_batch` rows against single-mask calls; no reference tensors needed).

Every random tensor diffusers draws (initial latents, VAE posterior samples, scheduler noise) is
recorded in order so the Rust pipeline can replay it through `ReplayNoise`.

Versions: torch 2.15.0, diffusers 0.42.1, transformers 5.23.0.
Uses the CLIP vocabulary in crates/anodiff/assets/clip (tools/parity/make_tokenizer_fixtures.py).
Regenerate:  python tools/parity/make_pipeline_fixtures.py [--keep-existing]
Writes tests/fixtures/pipeline/.

Reference outputs computed on another machine differ in the last float bits (PyTorch's CPU kernels
vary with the instruction set). `--keep-existing` keeps every reference tensor already in
reference.safetensors under the same name and shape, prints how far the fresh value drifted, and only
adds the new ones, so adding a case leaves the committed cases byte-identical. (The components'
config.json files list `_use_default_values` in Python set order, which changes from run to run;
restore them with git when nothing else in them changed.)
"""
import inspect
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
import diffusers
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
import diffusers.utils.torch_utils as tu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOK = os.path.join(ROOT, "crates", "anodiff", "assets", "clip")
OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")

SD15_SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                  clip_sample=False, prediction_type="epsilon")


def make_sched(cls, **extra):
    """SD-1.5's scheduler settings, minus the keys a class does not take (DDPM has no set_alpha_to_one)."""
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in SD15_SCHED.items() if k in params}, **extra)


def randomise(module, gen, scale=0.3, f16=False):
    """Every parameter random (diffusers zero-inits some, which would hide bugs)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm = any("norm" in part for part in name.split(".")[:-1])
            if is_norm:
                v = (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                v = torch.randn(p.shape, generator=gen) * (scale if p.dim() == 1 else 1.0 / fan_in ** 0.5)
            if f16:
                v = v.half().float()
            p.copy_(v)


# Record every draw diffusers makes, in order, by wrapping randn_tensor where it is imported.
DRAWS = []
_orig = tu.randn_tensor


def recording_randn(*a, **k):
    t = _orig(*a, **k)
    DRAWS.append(t.detach().clone().float())
    return t


for mod in ["diffusers.schedulers.scheduling_ddpm", "diffusers.schedulers.scheduling_ddim",
            "diffusers.schedulers.scheduling_euler_discrete", "diffusers.models.autoencoders.vae",
            "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
            "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint"]:
    setattr(sys.modules[mod], "randn_tensor", recording_randn)


def build():
    gen = torch.Generator().manual_seed(1234)
    te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    te = CLIPTextModel(te_cfg).eval()
    randomise(te, gen, f16=True)
    unet_kw = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                   attention_head_dim=2, cross_attention_dim=8,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw).eval()
    randomise(unet, gen)
    unet_inp = UNet2DConditionModel(in_channels=9, out_channels=4, **unet_kw).eval()
    randomise(unet_inp, gen)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=1,
                        norm_num_groups=4, latent_channels=4, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3).eval()
    randomise(vae, gen)
    return te, unet, unet_inp, vae


def save_component(model, sub, fname, f16=False):
    d = os.path.join(OUT, sub)
    os.makedirs(d, exist_ok=True)
    sd = {k: (v.half() if f16 else v).contiguous() for k, v in model.state_dict().items()}
    if hasattr(model.config, "to_dict"):
        cfg = model.config.to_dict()
    else:
        cfg = dict(model.config)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, default=str)
    save_file(sd, os.path.join(d, fname))


def main():
    keep = {}
    if "--keep-existing" in sys.argv[1:]:
        keep = load_file(os.path.join(OUT, "reference.safetensors"))
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    te, unet, unet_inp, vae = build()
    tok = CLIPTokenizer(os.path.join(TOK, "vocab.json"), os.path.join(TOK, "merges.txt"))
    tok.model_max_length = 77  # what SD-1 tokenizer folders set (and ClipTokenizer defaults to)
    save_component(te, "text_encoder", "model.safetensors", f16=True)
    save_component(unet, "unet", "diffusion_pytorch_model.safetensors")
    save_component(unet_inp, "unet_inpaint", "diffusion_pytorch_model.safetensors")
    save_component(vae, "vae", "diffusion_pytorch_model.safetensors")

    prompt, negative = "a photo of a scratched metal plate, macro", "blurry"
    ref = {}
    cases = []
    scheds = {
        "ddpm": (DDPMScheduler, dict(variance_type="fixed_small"), {}),
        "ddim": (DDIMScheduler, {}, {}),
        "ddim_eta05": (DDIMScheduler, {}, {"eta": 0.5}),
        "pndm": (PNDMScheduler, dict(skip_prk_steps=True), {}),
        "euler": (EulerDiscreteScheduler, {}, {}),
    }
    for name, (cls, extra, call_kw) in scheds.items():
        sched = make_sched(cls, **extra)
        d = os.path.join(OUT, "scheduler_" + name)
        sched.save_config(d)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        DRAWS.clear()
        g = torch.Generator().manual_seed(7)
        latents = torch.randn((1, 4, 8, 8), generator=g)
        with torch.no_grad():
            out = pipe(prompt, negative_prompt=negative, height=32, width=32, num_inference_steps=4,
                       guidance_scale=5.0, latents=latents, generator=g, output_type="latent", **call_kw).images
            image = vae.decode(out / vae.config.scaling_factor).sample
        draws = [latents] + list(DRAWS)
        ref[f"{name}.final"] = out.float()
        ref[f"{name}.image"] = image.float()
        for i, t in enumerate(draws):
            ref[f"{name}.draw{i}"] = t.contiguous()
        cases.append(dict(name=name, scheduler_dir="scheduler_" + name, unet_dir="unet", steps=4, guidance=5.0,
                          eta=call_kw.get("eta", 0.0), draws=len(draws), kind="txt2img"))

    # Inpainting: 9-channel UNet, PNDM, image and mask given as tensors in [-1,1] / {0,1}.
    sched = make_sched(PNDMScheduler, skip_prk_steps=True)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet_inp, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(11)
    image = (torch.rand((1, 3, 32, 32), generator=g) * 2 - 1)
    mask = torch.zeros((1, 1, 32, 32))
    mask[:, :, 8:20, 4:28] = 1.0
    latents = torch.randn((1, 4, 8, 8), generator=g)
    DRAWS.clear()
    with torch.no_grad():
        out = pipe(prompt, image=image * 0.5 + 0.5, mask_image=mask, negative_prompt=negative, height=32, width=32,
                   num_inference_steps=4, guidance_scale=5.0, latents=latents, generator=g,
                   output_type="latent").images
    draws = [latents] + list(DRAWS)
    ref["inpaint.image_in"] = image
    ref["inpaint.mask"] = mask
    ref["inpaint.final"] = out.float()
    for i, t in enumerate(draws):
        ref[f"inpaint.draw{i}"] = t.contiguous()
    sched.save_config(os.path.join(OUT, "scheduler_inpaint"))
    cases.append(dict(name="inpaint", scheduler_dir="scheduler_inpaint", unet_dir="unet_inpaint", steps=4,
                      guidance=5.0, eta=0.0, draws=len(draws), kind="inpaint", prompt=prompt, negative=negative))

    # Partial-denoising inpainting for every scheduler: strength 0.5 with 6 steps keeps the last 3,
    # strength 0.3 with 10 steps keeps int(10 * 0.3) = 3 of a longer schedule (so the run starts
    # late, at a low noise level). Each starts from the image latents noised to the first kept
    # timestep (sigma space for Euler, whose kept timesteps are fractional here). No `latents`
    # argument: given latents would make diffusers ignore the image, so the pipeline draws
    # everything itself (image posterior, start noise, masked-image posterior, step noise) and all
    # of it is recorded.
    partial = [(0.5, 6, 13, "inpaint05"), (0.3, 10, 17, "inpaint03")]
    for strength, steps, seed, prefix in partial:
        for name, (cls, extra, _) in scheds.items():
            if name == "ddim_eta05":
                continue
            sched = make_sched(cls, **extra)
            pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet_inp,
                                                  scheduler=sched, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            DRAWS.clear()
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                out = pipe(prompt, image=image * 0.5 + 0.5, mask_image=mask, negative_prompt=negative,
                           height=32, width=32, num_inference_steps=steps, strength=strength,
                           guidance_scale=5.0, generator=g, output_type="latent").images
            case = f"{prefix}_{name}"
            ref[f"{case}.final"] = out.float()
            for i, t in enumerate(DRAWS):
                ref[f"{case}.draw{i}"] = t.contiguous()
            cases.append(dict(name=case, scheduler_dir="scheduler_" + name, unet_dir="unet_inpaint",
                              steps=steps, guidance=5.0, eta=0.0, draws=len(DRAWS), kind="inpaint",
                              strength=strength))
    for c in cases:
        c.setdefault("prompt", prompt)
        c.setdefault("negative", negative)
    for k, old in keep.items():
        if k in ref and ref[k].shape == old.shape:
            drift = (ref[k] - old).abs().max().item()
            if drift:
                print(f"kept {k}: fresh value differs by max|diff| = {drift:.3e}")
            ref[k] = old
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(versions=dict(torch=torch.__version__, diffusers=diffusers.__version__), cases=cases), f, indent=1)
    print("wrote", OUT, {c["name"]: c["draws"] for c in cases})


if __name__ == "__main__":
    main()
