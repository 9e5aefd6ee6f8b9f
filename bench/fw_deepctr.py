"""Benchmark worker: DeepCTR-Torch 0.3.0 (bench/.venv-competitors). Started by run_all.py.

The timed step is the body of DeepCTR-Torch's `BaseModel.fit` loop, minus its per-batch sklearn
metrics and DataLoader: `x.float()` (fit feeds one float matrix), forward (sigmoid output), BCE
(reduction='sum', as fit does) + `get_regularization_loss()` + aux loss, backward, Adam step,
`loss.item()`. Sizes match the other frameworks: embedding 16 for every field, the same MLP,
L2 1e-5 on embeddings and the linear part (its defaults), 0 on the MLP, Adam lr 1e-3.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def build(name: str, hp: dict, fm: dict, emb_reg: float):
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch import models
    cols = [SparseFeat(f["name"], vocabulary_size=int(f["vocab_size"]), embedding_dim=int(hp["embedding_dim"]))
            for f in fm["fields"]]
    common = dict(dnn_hidden_units=tuple(hp["hidden_units"]), l2_reg_embedding=emb_reg, l2_reg_dnn=0,
                  dnn_dropout=hp.get("net_dropout", 0.0), task="binary", device="cpu", seed=2021)
    if name == "DeepFM":
        m = models.DeepFM(cols, cols, l2_reg_linear=emb_reg, **common)
    elif name == "DCN":
        m = models.DCN(cols, cols, cross_num=hp.get("num_cross_layers", 3), cross_parameterization="vector",
                       l2_reg_linear=emb_reg, l2_reg_cross=0, **common)
    elif name == "PNN":
        m = models.PNN(cols, use_inner=True, use_outter=False, **common)
    elif name == "FiBiNET":
        m = models.FiBiNET(cols, cols, bilinear_type="interaction", reduction_ratio=hp.get("reduction_ratio", 3),
                           l2_reg_linear=emb_reg, **common)
    else:
        raise ValueError(f"unknown model {name}")
    m.compile("adam", "binary_crossentropy")  # torch Adam, lr 1e-3
    return m


def run_one(spec, model_spec, torch, data):
    import torch.nn.functional as F
    name = model_spec["model"]
    torch.manual_seed(int(spec.get("seed", 2021)))
    model = build(name, model_spec["hparams"], data["feature_map"], float(spec.get("embedding_regularizer", 1e-5)))
    model.train()
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    bs = int(spec["batch_size"])

    def step(batch):
        x, y = batch
        y_pred = model(x.float()).squeeze()
        model.optim.zero_grad()
        loss = F.binary_cross_entropy(y_pred, y, reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        total.item()
        total.backward()
        model.optim.step()

    if spec["mode"] == "auc":
        t0 = time.perf_counter()
        for idx in _common.epoch_indices(torch, Xtr.shape[0], bs, int(spec.get("seed", 2021))):
            step((Xtr.index_select(0, idx), ytr.index_select(0, idx)))
        train_s = time.perf_counter() - t0
        Xte, yte = data["test"]
        model.eval()
        X = torch.from_numpy(Xte).float()  # what its predict() feeds the model
        with torch.no_grad():
            p = torch.cat([model(X[s:s + bs]).reshape(-1) for s in range(0, X.shape[0], bs)])  # training batch size: bounded memory
        m = _common.auc_logloss(yte, p.numpy())
        return {"test_auc": m["auc"], "test_logloss": m["logloss"], "train_rows": int(Xtr.shape[0]),
                "fit_samples_per_s": Xtr.shape[0] / train_s, "seconds": time.perf_counter() - t0}

    it = _common.batch_indices(torch, Xtr.shape[0], bs, int(spec.get("seed", 2021)))

    def next_batch():
        idx = next(it)
        return Xtr.index_select(0, idx), ytr.index_select(0, idx)

    out = _common.time_steps(step, next_batch, spec)
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


if __name__ == "__main__":
    _common.run_worker(_common.parse_spec(), run_one)
