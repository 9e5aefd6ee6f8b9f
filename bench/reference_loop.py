"""The "bare reference loop": DeepFM written directly in PyTorch, trained over in-memory index
tensors with no framework at all -- the speed a hand-written loop gets on this machine, the bar
ctrkit's DeepFM must reach (>= 0.9x). Same maths as ctrkit's DeepFM (one fused embedding table
with per-field offsets, first-order term, FM, MLP), Adam with weight decay on the embedding
tables, BCE with logits, gradient clipping at 10, so the two do equal work.

Run alone:  python bench/reference_loop.py --spec '{"data": "<prepared dir>", "batch_size": 10000,
            "warmup": 2, "steps": 10, "models": [{"model": "DeepFM", "hparams": {"embedding_dim": 16,
            "hidden_units": [400, 400, 400]}}], "framework": "reference", "mode": "speed"}'
(run_all.py starts it that way, interleaved with the frameworks.)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def run_one(spec, model_spec, torch, data):
    from torch import nn
    import torch.nn.functional as F

    if model_spec["model"] != "DeepFM":
        raise ValueError("the reference loop implements DeepFM only")
    hp = model_spec["hparams"]
    d, hidden = int(hp["embedding_dim"]), [int(h) for h in hp["hidden_units"]]
    sizes = [int(f["vocab_size"]) for f in data["feature_map"]["fields"]]
    nf, V = len(sizes), sum(sizes)
    offsets = torch.tensor([0] + sizes[:-1]).cumsum(0).to(torch.int32)

    emb = nn.Parameter(torch.randn(V, d) * 1e-4)
    w1 = nn.Parameter(torch.randn(V, 1) * 1e-4)
    bias = nn.Parameter(torch.zeros(1))
    dims = [nf * d] + hidden
    mlp_layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        mlp_layers += [nn.Linear(a, b), nn.ReLU()]
    mlp = nn.Sequential(*mlp_layers, nn.Linear(dims[-1], 1))
    opt = torch.optim.Adam([{"params": [emb, w1], "weight_decay": float(spec.get("embedding_regularizer", 1e-5))},
                            {"params": [bias, *mlp.parameters()], "weight_decay": 0.0}], lr=1e-3)
    params = [emb, w1, bias, *mlp.parameters()]

    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    bs = int(spec["batch_size"])
    it = _common.batch_indices(torch, Xtr.shape[0], bs, int(spec.get("seed", 2021)))

    def next_batch():
        idx = next(it)
        return Xtr.index_select(0, idx), ytr.index_select(0, idx)

    def step(batch):
        xb, yb = batch
        rows = xb + offsets
        e = F.embedding(rows, emb)                                   # [B, F, d]
        first = F.embedding(rows, w1).sum(dim=(1, 2)) + bias
        s = e.sum(1)
        fm = 0.5 * (s * s - (e * e).sum(1)).sum(1)
        logit = first + fm + mlp(e.flatten(1)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logit, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()

    out = _common.time_steps(step, next_batch, spec)
    out["params"] = sum(p.numel() for p in params)
    return out


if __name__ == "__main__":
    _common.run_worker(_common.parse_spec(), run_one)
