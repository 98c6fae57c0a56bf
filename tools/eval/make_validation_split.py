#!/usr/bin/env python3
# Usage: make_validation_split.py SPLIT.json DATASET_ROOT OUT EVERY  (SPLIT from `anodiff split`)
"""Validation dataset from training material only: test/good = every Nth train/good image
(sorted), train/good = the rest, test/<type> = the few-shot split's *training* defects."""
import json, os, sys
split, root, out, every = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
d = json.load(open(split))
goods = sorted(d['train_good'], key=lambda e: e['stem'])
for sub in ['train/good', 'test/good']:
    os.makedirs(f'{out}/{sub}', exist_ok=True)
for i, e in enumerate(goods):
    sub = 'test/good' if i % every == 0 else 'train/good'
    dst = f"{out}/{sub}/{os.path.basename(e['image'])}"
    if not os.path.exists(dst): os.symlink(f"{root}/{e['image']}", dst)
for t, v in d['defects'].items():
    os.makedirs(f'{out}/test/{t}', exist_ok=True); os.makedirs(f'{out}/ground_truth/{t}', exist_ok=True)
    for e in v['train']:
        for key, sub in [('image', 'test'), ('mask', 'ground_truth')]:
            dst = f"{out}/{sub}/{t}/{os.path.basename(e[key])}"
            if not os.path.exists(dst): os.symlink(f"{root}/{e[key]}", dst)
print(out, sum(1 for i in range(len(goods)) if i % every == 0), 'val good,', sum(len(v['train']) for v in d['defects'].values()), 'val defects')
