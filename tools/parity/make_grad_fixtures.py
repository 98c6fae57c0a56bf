#!/usr/bin/env python
"""Gradient parity fixture: PyTorch autograd gradients of a tiny diffusers UNet (the sd1 UNet fixture,
tests/fixtures/unet/sd1/unet) for loss = sum(unet(sample, t, ehs) * R).

Records the inputs (sample, timesteps, encoder_hidden_states, R), the gradients w.r.t. sample and
encoder_hidden_states, and the gradients of a selection of parameters covering every block kind
(conv_in/out, time embedding, ResNet norms/convs, attention q/k/v/out, feed-forward, proj_in,
down/up-samplers). The Rust test (crates/anodiff/tests/grad_parity.rs) checks ours against it.

Second fixture (unet_sd1_lora.safetensors): the same UNet frozen, with the LoRA fixture loaded by
diffusers+peft; gradients of lora_A/lora_B (self and cross attention, down/mid/up) and of the input.

Versions: torch 2.15 (CPU), diffusers 0.42.1, peft 0.21.2.
Regenerate: python tools/parity/make_grad_fixtures.py   (needs the unet fixture)
"""
import re
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
UNET = ROOT / "tests" / "fixtures" / "unet" / "sd1" / "unet"
OUT = ROOT / "tests" / "fixtures" / "grad"

SELECT = re.compile(
    r"^(conv_in|conv_out|time_embedding\.linear_1)\.weight$"
    r"|^down_blocks\.0\.resnets\.0\.(norm1|conv1|time_emb_proj)\.weight$"
    r"|^down_blocks\.0\.attentions\.0\.(proj_in\.weight|transformer_blocks\.0\.(attn1\.to_q|attn1\.to_k|attn2\.to_v|attn2\.to_out\.0|ff\.net\.0\.proj|norm2)\.weight)$"
    r"|^down_blocks\.0\.downsamplers\.0\.conv\.weight$"
    r"|^mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight$"
    r"|^up_blocks\.0\.upsamplers\.0\.conv\.weight$"
    r"|^up_blocks\.2\.attentions\.1\.transformer_blocks\.0\.attn1\.to_v\.weight$"
)


def lora_case():
    """The same UNet, frozen, with the LoRA of the LoRA fixture (tests/fixtures/lora, r=4, alpha=8,
    A and B random) loaded through diffusers' own loader: gradients of every lora_A/lora_B of a few
    attention layers (self and cross, down/mid/up) and of the input."""
    from diffusers import StableDiffusionPipeline
    unet = UNet2DConditionModel.from_pretrained(UNET).float().eval()
    # Through the pipeline loader so the file's lora_alpha metadata is honoured (the model-level
    # `load_lora_adapter` would silently use alpha = r).
    state, alphas, meta = StableDiffusionPipeline.lora_state_dict(
        ROOT / "tests" / "fixtures" / "lora", weight_name="pytorch_lora_weights.safetensors",
        return_lora_metadata=True)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, metadata=meta)
    assert [(c.r, c.lora_alpha) for c in unet.peft_config.values()] == [(4, 8)]
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    g = torch.Generator().manual_seed(5)
    sample = torch.randn((2, 4, 8, 8), generator=g).requires_grad_(True)
    ehs = torch.randn((2, 5, unet.config.cross_attention_dim), generator=g)
    t = torch.tensor([30.0, 600.0])
    out = unet(sample, t, encoder_hidden_states=ehs).sample
    r = torch.randn(out.shape, generator=g)
    (out * r).sum().backward()
    rec = {"sample": sample.detach(), "timesteps": t, "encoder_hidden_states": ehs, "r": r, "out": out.detach(),
           "grad.sample": sample.grad}
    keep = re.compile(r"^(down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn[12]"
                      r"|mid_block\.attentions\.0\.transformer_blocks\.0\.attn2"
                      r"|up_blocks\.2\.attentions\.1\.transformer_blocks\.0\.attn1)\.")
    n = 0
    for name, p in unet.named_parameters():
        if "lora_" in name and keep.match(name):
            # peft: `<module>.lora_A.<adapter>.weight` -> `<module>.lora_A.weight`
            parts = name.split(".")
            del parts[-2]
            rec["grad.lora." + ".".join(parts)] = p.grad
            n += 1
    assert n >= 24, n
    save_file({k: v.contiguous() for k, v in rec.items()}, OUT / "unet_sd1_lora.safetensors")
    print(f"wrote {OUT / 'unet_sd1_lora.safetensors'}: {n} LoRA gradients")


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(UNET).float().eval()
    g = torch.Generator().manual_seed(3)
    sample = torch.randn((2, 4, 8, 8), generator=g).requires_grad_(True)
    ehs = torch.randn((2, 5, unet.config.cross_attention_dim), generator=g).requires_grad_(True)
    t = torch.tensor([50.0, 800.0])
    out = unet(sample, t, encoder_hidden_states=ehs).sample
    r = torch.randn(out.shape, generator=g)
    (out * r).sum().backward()
    rec = {"sample": sample.detach(), "timesteps": t, "encoder_hidden_states": ehs.detach(), "r": r,
           "out": out.detach(), "grad.sample": sample.grad, "grad.encoder_hidden_states": ehs.grad}
    names = [n for n, _ in unet.named_parameters() if SELECT.match(n)]
    assert len(names) >= 15, names
    params = dict(unet.named_parameters())
    for n in names:
        rec["grad.param." + n] = params[n].grad
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rec.items()}, OUT / "unet_sd1.safetensors")
    print(f"wrote {OUT / 'unet_sd1.safetensors'}: {len(names)} parameter gradients")
    lora_case()


if __name__ == "__main__":
    main()
