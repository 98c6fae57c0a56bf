#!/usr/bin/env python3
"""Parity fixture for anodiff::eval::lpips (the `lpips` package's LPIPS v0.1, nets `alex` and `vgg`).

Pretrained AlexNet/VGG16 weights cannot be downloaded here, and random backbones at full width are
10-60 MB: too large to commit. So the backbone weights follow a closed formula that the Rust test
recomputes (`formula` below), and only the small learned linear heads (the real ones shipped inside
the `lpips` package, `weights/v0.1/{alex,vgg}.pth`), the inputs and the reference outputs are stored:

  tests/fixtures/lpips/reference.safetensors
      <net>.lin<k>           [1, C_k, 1, 1]  the package's linear head k (float32)
      <net>.x0, <net>.x1     [2, 3, H, W]    inputs in [-1, 1]
      <net>.dist             [2]             LPIPS(x0, x1), spatially averaged (spatial=False)
      <net>.map              [2, 1, H, W]    LPIPS(x0, x1, spatial=True) (bilinear upsampling)
      <net>.grad             [2, 3, H, W]    d(sum of dist)/d(x1) by autograd

Backbone formula for the conv of (0-based) index `j` in the net's feature list, in float64 then
rounded to float32, element `i` in row-major order:
      weight[i] = sin(0.37 * i + j) * 2 / sqrt(fan_in)        fan_in = in_channels * k * k
      bias[i]   = 0.05 * sin(0.11 * i + j + 1) + 0.02

Cases: alex on [2, 3, 48, 56], vgg on [2, 3, 32, 40] (both non-square). x1 is x0 plus a local change
(a block replaced by noise) in image 0 and a global brightness shift in image 1.

Versions: torch 2.15.0, lpips 0.1.4, safetensors (venv).
Regenerate: python tools/parity/make_lpips_fixtures.py
"""
import math
import os

import lpips
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "lpips")

CASES = {"alex": (48, 56), "vgg": (32, 40)}


def formula(shape, j, bias):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    if bias:
        v = 0.05 * np.sin(0.11 * i + j + 1) + 0.02
    else:
        fan_in = int(np.prod(shape[1:]))
        v = np.sin(0.37 * i + j) * 2.0 / math.sqrt(fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    for net, (h, w) in CASES.items():
        # pretrained=True loads the package's linear heads; pnet_rand=True skips the download of
        # the ImageNet backbone, whose weights we then set by the formula.
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
        with torch.no_grad():
            for name, p in model.net.named_parameters():
                # name: slice<s>.<j>.weight|bias, j = index in torchvision's `features`.
                j = int(name.split(".")[1])
                p.copy_(formula(tuple(p.shape), j, name.endswith("bias")))
        for k, lin in enumerate(model.lins):
            tensors[f"{net}.lin{k}"] = lin.model[1].weight.detach().clone().contiguous()
        x0 = torch.rand(2, 3, h, w) * 2 - 1
        x1 = x0.clone()
        x1[0, :, h // 4 : h // 2, w // 3 : w // 2] = torch.rand(3, h // 2 - h // 4, w // 2 - w // 3) * 2 - 1
        x1[1] = (x1[1] + 0.3).clamp(-1, 1)
        x1.requires_grad_(True)
        dist = model(x0, x1).flatten()
        dist.sum().backward()
        spatial = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, spatial=True, verbose=False).eval()
        spatial.load_state_dict(model.state_dict())
        with torch.no_grad():
            smap = spatial(x0, x1.detach())
        tensors[f"{net}.x0"] = x0.contiguous()
        tensors[f"{net}.x1"] = x1.detach().contiguous()
        tensors[f"{net}.dist"] = dist.detach().contiguous()
        tensors[f"{net}.map"] = smap.contiguous()
        tensors[f"{net}.grad"] = x1.grad.contiguous()
        print(net, "dist", dist.detach().numpy(), "map mean", smap.mean().item())
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))


if __name__ == "__main__":
    main()
