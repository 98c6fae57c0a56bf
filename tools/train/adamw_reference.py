"""Reference numbers for the AdamW unit test (crates/anodiff/tests/train_optim.rs).

torch.optim.AdamW (decoupled weight decay, bias correction, amsgrad=False) on a 4-element
parameter for 3 steps with fixed gradients; prints the parameter and optimiser state after each
step, pasted into the test as constants.
Generated with torch 2.15 (CPU). Regenerate: python tools/train/adamw_reference.py
"""
import torch

torch.set_printoptions(precision=10)
p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float32))
grads = [
    [0.1, -0.2, 0.3, 0.0],
    [-0.05, 0.4, 0.0, 1e-3],
    [0.7, 0.1, -0.3, -2.0],
]
opt = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
for i, g in enumerate(grads):
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    st = opt.state[p]
    print(f"step {i + 1}: param = {[float(x) for x in p.detach()]}")
    print(f"        m = {[float(x) for x in st['exp_avg']]}")
    print(f"        v = {[float(x) for x in st['exp_avg_sq']]}")
