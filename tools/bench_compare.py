#!/usr/bin/env python3
"""Runs `anodiff bench <what> --json` and `tools/bench_reference.py <what> --json` back to back with the
same arguments and prints one markdown table with the ratio ours/PyTorch (the BENCHMARKS.md tables).

Usage (from the repository root, after `cargo build --release`):
    /work/venv/bin/python tools/bench_compare.py ops
    /work/venv/bin/python tools/bench_compare.py unet --preset sd15 --size 256 --batch 2
    /work/venv/bin/python tools/bench_compare.py unet --preset sd15 --size 256 --batch 2 --train-lora
"""
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("ops", "unet"):
        sys.exit(__doc__)
    what, rest = sys.argv[1], sys.argv[2:]
    ours = run([os.path.join(ROOT, "target", "release", "anodiff"), "bench", what, *rest, "--json"])
    torch = run([sys.executable, os.path.join(ROOT, "tools", "bench_reference.py"), what, *rest, "--json"])
    print(f"`anodiff bench {what} {' '.join(rest)}` vs `tools/bench_reference.py {what} {' '.join(rest)}`\n")
    print("| key | anodiff | PyTorch | ratio ours/PyTorch |")
    print("|---|---|---|---|")
    for k, v in ours.items():
        if isinstance(v, (int, float)) and k in torch and isinstance(torch[k], (int, float)) and k not in (
                "size", "batch", "repeats", "threads"):
            unit = " MiB" if k.endswith("_mb") else (" ms" if k not in ("parameters", "lora_params") else "")
            ratio = v / torch[k] if torch[k] else float("nan")
            print(f"| {k} | {v:.1f}{unit} | {torch[k]:.1f}{unit} | {ratio:.2f} |")
    print()
    print("raw:", json.dumps({"anodiff": ours, "pytorch": torch}))


if __name__ == "__main__":
    main()
