#!/usr/bin/env python3
# Usage: make_validation_split.py SPLIT.json OUT EVERY   (SPLIT written by `anodiff split`; its
# "dataset" field names the dataset root, resolved against the current directory if relative)
"""Validation dataset from training material only: test/good = every Nth train/good image
(sorted), train/good = the rest, test/<type> = the few-shot split's *training* defects.
Files are symlinks to the dataset, which is never copied."""
import json, os, sys

split, out, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = json.load(open(split))
root = os.path.abspath(d['dataset'])


def link(rel, sub):
    dst = f"{out}/{sub}/{os.path.basename(rel)}"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.lexists(dst):  # a link left by an earlier run, even one whose target moved
        os.symlink(f"{root}/{rel}", dst)


goods = sorted(d['train_good'], key=lambda e: e['stem'])
for i, e in enumerate(goods):
    link(e['image'], 'test/good' if i % every == 0 else 'train/good')
for t, v in d['defects'].items():
    for e in v['train']:
        link(e['image'], f'test/{t}')
        link(e['mask'], f'ground_truth/{t}')
print(out, len(goods[::every]), 'val good,', sum(len(v['train']) for v in d['defects'].values()), 'val defects')
