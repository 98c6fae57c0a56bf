"""Our own PyTorch reference of the DualAnoDiff dual model (METHODS.md part A), written from the
specification on diffusers' attention-processor API. Shared by the parity fixtures
(tools/parity/make_dual_fixtures.py, tiny UNet) and the benchmark (tools/bench_reference.py dual,
SD-1.5 size), so both run one definition.

The dual model, per UNet attention layer (self `attn1` and cross `attn2`):
- two LoRA sets on to_q, to_k, to_v, to_out.0 (set 0 for whole-image rows, set 1 for anomaly-part
  rows; row i uses set branch[i]); scale 1; one shared LoRA set on the text encoder's
  q_proj/k_proj/v_proj/out_proj;
- SAIM on the layer output o (after to_out with its LoRA): x = L(LayerNorm(o)), pairs (row 2i whole,
  row 2i+1 part) form a length-2 sequence per token, single-head attention (scale 1/sqrt(C)) with
  Wq, Wk, Wv, output Wo; o + SAIM(o). Not in the BCM reference pass.
- BCM on attn1 only: a reference pass (whole-image LoRA on every row, whole prompt, no SAIM, no
  fusion) records the input hidden states h_ref of every attn1; in the main pass, for whole rows
  only, keys and values come from fuse(h, MLP(h_ref)) with MLP = Linear(C, hidden) -> Linear(hidden, C)
  ("paper": h + g * MLP(h_ref); "code": (1 - a) * h + a * MLP(h_ref)). The k-th whole row of the
  main batch uses the k-th row of the reference batch.

Random draws happen in construction order (per attention layer: LoRA to_q, to_k, to_v, to_out —
each all down matrices, then all up matrices —, SAIM, BCM; then the text-encoder LoRA layer by
layer), so a seeded build is reproducible.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class State:
    """What every processor of one forward pass needs: the row branches, the pass kind and the
    reference hidden states recorded by the reference pass."""

    def __init__(self):
        self.branch = None
        self.kind = "main"  # or "reference"
        self.refs = {}
        self.fusion = "paper"  # or "code" or None (BCM off)
        self.saim = True


class LoraSets(nn.Module):
    """`sets` LoRA pairs on one frozen linear layer; row i of the batch uses set branch[i]."""

    def __init__(self, n_in, n_out, rank, sets=2):
        super().__init__()
        self.down = nn.ParameterList([nn.Parameter(torch.randn(rank, n_in) / rank) for _ in range(sets)])
        self.up = nn.ParameterList([nn.Parameter(torch.randn(n_out, rank) * 0.2) for _ in range(sets)])

    def forward(self, base, x, branch):
        y = base(x)
        for s in range(len(self.down)):
            sel = torch.tensor([1.0 if b == s else 0.0 for b in branch]).view(-1, *([1] * (x.dim() - 1)))
            y = y + sel * F.linear(F.linear(x, self.down[s]), self.up[s])
        return y


class Saim(nn.Module):
    """Self-Attention Interaction Module: each token's whole / part rows attend to each other."""

    def __init__(self, c):
        super().__init__()
        self.temporal_n = nn.LayerNorm(c, eps=1e-6)
        self.temporal_i = nn.Linear(c, c)
        self.temporal_q = nn.Linear(c, c)
        self.temporal_k = nn.Linear(c, c)
        self.temporal_v = nn.Linear(c, c)
        self.temporal_o = nn.Linear(c, c)

    def forward(self, o):
        b2, t, c = o.shape
        x = self.temporal_i(self.temporal_n(o))
        # (b*2, t, c) -> (b*t, 2, c): row 2i and 2i+1 of the same token attend to each other.
        x = x.view(b2 // 2, 2, t, c).permute(0, 2, 1, 3).reshape(b2 // 2 * t, 2, c)
        q, k, v = self.temporal_q(x), self.temporal_k(x), self.temporal_v(x)
        w = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        y = self.temporal_o(w @ v)
        y = y.view(b2 // 2, t, 2, c).permute(0, 2, 1, 3).reshape(b2, t, c)
        return o + y


class Bcm(nn.Module):
    """Background Compensation Module: an MLP of the reference features, fused into keys/values."""

    def __init__(self, c, hidden, gate):
        super().__init__()
        self.temporal_condition_mlp = nn.Sequential(nn.Linear(c, hidden), nn.Linear(hidden, c))
        self.temporal_a = nn.Parameter(torch.tensor([gate]))

    def fuse(self, h, h_ref, fusion):
        m = self.temporal_condition_mlp(h_ref)
        if fusion == "paper":
            return h + self.temporal_a * m
        return (1 - self.temporal_a) * h + self.temporal_a * m


class DualProcessor(nn.Module):
    """The attention processor of one layer: LoRA sets, BCM (self-attention only), SAIM.
    `sdpa` computes the attention with F.scaled_dot_product_attention (as diffusers' default
    processor does; the benchmark) instead of the explicit softmax (the parity fixtures)."""

    def __init__(self, name, attn, state, is_self, rank, mlp_hidden, gate, sdpa=False):
        super().__init__()
        self.name, self.state, self.is_self, self.sdpa = name, state, is_self, sdpa
        c = attn.to_q.in_features
        self.lora = nn.ModuleDict({
            "to_q": LoraSets(attn.to_q.in_features, attn.to_q.out_features, rank),
            "to_k": LoraSets(attn.to_k.in_features, attn.to_k.out_features, rank),
            "to_v": LoraSets(attn.to_v.in_features, attn.to_v.out_features, rank),
            "to_out": LoraSets(attn.to_out[0].in_features, attn.to_out[0].out_features, rank),
        })
        self.saim = Saim(c)
        self.bcm = Bcm(c, mlp_hidden, gate) if is_self else None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        st = self.state
        h = hidden_states
        branch = st.branch
        if st.kind == "reference":
            branch = [0] * h.shape[0]
            if self.is_self:
                st.refs[self.name] = h
        kv = h if encoder_hidden_states is None else encoder_hidden_states
        if self.is_self and st.kind == "main" and st.fusion is not None:
            whole = [i for i, b in enumerate(branch) if b == 0]
            h_ref = st.refs[self.name]
            assert h_ref.shape[0] == len(whole)
            fused = self.bcm.fuse(h[whole], h_ref, st.fusion)
            rows = []
            k = 0
            for i in range(h.shape[0]):
                if branch[i] == 0:
                    rows.append(fused[k])
                    k += 1
                else:
                    rows.append(h[i])
            kv = torch.stack(rows)
        q = self.lora["to_q"](attn.to_q, h, branch)
        k = self.lora["to_k"](attn.to_k, kv, branch)
        v = self.lora["to_v"](attn.to_v, kv, branch)
        b, t, _ = q.shape
        hd = q.shape[-1] // attn.heads
        q, k, v = (z.view(b, -1, attn.heads, hd).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v
        o = o.transpose(1, 2).reshape(b, t, attn.heads * hd)
        o = self.lora["to_out"](attn.to_out[0], o, branch)
        if st.kind == "main" and st.saim:
            o = self.saim(o)
        return o


class LoraLinear(nn.Module):
    """A frozen linear layer plus one LoRA pair (the text encoder's shared set)."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.up = nn.Parameter(torch.randn(base.out_features, rank) * 0.2)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)


def install_unet(unet, state, rank, mlp_hidden, gate, sdpa=False):
    """A DualProcessor on every attention layer of `unet`; returns them by processor name."""
    procs = {}
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        module = unet.get_submodule(layer)
        procs[name] = DualProcessor(layer, module, state, layer.endswith("attn1"), rank, mlp_hidden, gate, sdpa)
    unet.set_attn_processor(dict(procs))  # diffusers pops entries from the dict it is given
    return procs


def install_text_lora(te, rank):
    """LoRA on the text encoder's q/k/v/out projections; returns the wrapped layers by peft name."""
    te_lora = {}
    for li, layer in enumerate(te.encoder.layers):
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            wrapped = LoraLinear(getattr(layer.self_attn, p), rank)
            setattr(layer.self_attn, p, wrapped)
            te_lora[f"text_model.encoder.layers.{li}.self_attn.{p}"] = wrapped
    return te_lora


def dual_params(procs):
    """SAIM/BCM parameters by file name; LoRA by (set, diffusers module)."""
    mods, lora = {}, {0: {}, 1: {}}
    for proc in procs.values():
        for n, p in proc.saim.named_parameters():
            mods[f"{proc.name}.{n}"] = p
        if proc.bcm is not None:
            for n, p in proc.bcm.named_parameters():
                mods[f"{proc.name}.{n}"] = p
        for proj, l in proc.lora.items():
            target = "to_out.0" if proj == "to_out" else proj
            for s in range(2):
                lora[s][f"{proc.name}.{target}"] = (l.down[s], l.up[s])
    return mods, lora
