"""Benchmark worker: FuxiCTR 2.3.10 (bench/.venv-competitors). Started by run_all.py.

The models are FuxiCTR's own `model_zoo` classes (DeepFM, DCN, PNN, FiBiNET: not in the PyPI
package), loaded from $FUXICTR_MODEL_ZOO (a reczoo/FuxiCTR checkout's model_zoo/, kept outside this
repository). The timed step is FuxiCTR's own `BaseModel.train_step` (zero_grad, forward, BCE +
its L2 regularization loss, backward, clip_grad_norm 10, Adam step) on a batch dict
{field: int tensor, "label": float tensor} cut from in-memory tensors -- FuxiCTR's parquet/npz
data loader (and Ray) is NOT in the timed path, which favours FuxiCTR if anything.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# model -> file inside model_zoo (the torch variants)
ZOO_FILES = {"DeepFM": "DeepFM/DeepFM_torch/src/DeepFM.py", "DCN": "DCN/DCN_torch/src/DCN.py",
             "PNN": "PNN/src/PNN.py", "FiBiNET": "FiBiNET/src/FiBiNET.py"}


def zoo_class(name: str):
    zoo = os.environ.get("FUXICTR_MODEL_ZOO")
    if not zoo:
        raise RuntimeError("FUXICTR_MODEL_ZOO is unset")
    path = Path(zoo) / ZOO_FILES[name]
    spec = importlib.util.spec_from_file_location(f"fuxictr_zoo_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def feature_map_for(fm: dict, workdir: str, embedding_dim: int):
    from fuxictr.features import FeatureMap
    m = FeatureMap("ctrkit_bench", workdir)
    m.default_emb_dim = int(embedding_dim)  # FeatureMap.load sets it from params["embedding_dim"]
    # padding_idx None: our indices have no reserved padding row (ctrkit trains row 0 too)
    for f in fm["fields"]:
        m.features[f["name"]] = {"type": "categorical", "source": "", "vocab_size": int(f["vocab_size"])}
    m.labels = ["label"]
    m.num_fields = m.get_num_fields()
    m.total_features = sum(int(f["vocab_size"]) for f in fm["fields"])
    m.input_length = m.num_fields
    m.set_column_index()
    return m


def hparams_for(model: str, hp: dict) -> dict:
    out = {"embedding_dim": hp["embedding_dim"], "net_dropout": hp.get("net_dropout", 0.0),
           "batch_norm": hp.get("batch_norm", False)}
    if model == "DCN":  # FuxiCTR's DCN names its MLP arguments differently
        out.update(dnn_hidden_units=list(hp["hidden_units"]), dnn_activations="ReLU",
                   num_cross_layers=hp.get("num_cross_layers", 3))
    else:
        out.update(hidden_units=list(hp["hidden_units"]), hidden_activations="ReLU")
    if model == "FiBiNET":
        out.update(reduction_ratio=hp.get("reduction_ratio", 3),
                   bilinear_type=hp.get("bilinear_type", "field_interaction"))
    return out


def run_one(spec, model_spec, torch, data):
    import logging
    logging.disable(logging.INFO)
    name = model_spec["model"]
    cls = zoo_class(name)
    workdir = tempfile.mkdtemp(prefix="fuxictr_bench_")
    fmap = feature_map_for(data["feature_map"], workdir, model_spec["hparams"]["embedding_dim"])
    torch.manual_seed(int(spec.get("seed", 2021)))
    model = cls(fmap, model_id=name, gpu=-1, learning_rate=1e-3,
                embedding_regularizer=spec.get("embedding_regularizer", 1e-5), net_regularizer=0,
                optimizer="adam", loss="binary_crossentropy", metrics=["logloss", "AUC"],
                model_root=workdir, verbose=0, **hparams_for(name, model_spec["hparams"]))
    model._max_gradient_norm = 10.0  # what BaseModel.fit sets before calling train_step
    model.train()
    names = [f["name"] for f in data["feature_map"]["fields"]]
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    bs = int(spec["batch_size"])

    def batch_dict(xb, yb):
        d = {n: xb[:, j] for j, n in enumerate(names)}
        d["label"] = yb
        return d

    if spec["mode"] == "auc":
        t0 = time.perf_counter()
        for idx in _common.epoch_indices(torch, Xtr.shape[0], bs, int(spec.get("seed", 2021))):
            model.train_step(batch_dict(Xtr.index_select(0, idx), ytr.index_select(0, idx)))
        train_s = time.perf_counter() - t0
        Xte, yte = (torch.from_numpy(a) for a in data["test"])
        model.eval()
        preds = []
        with torch.no_grad():
            # evaluate at the training batch size, as FuxiCTR's own evaluate() does: its FiBiNET
            # broadcasts [B, P, d, d] and a 65536-row batch would not fit in memory
            for s in range(0, Xte.shape[0], bs):
                preds.append(model.forward(batch_dict(Xte[s:s + bs], yte[s:s + bs]))["y_pred"].view(-1))
        m = _common.auc_logloss(yte.numpy(), torch.cat(preds).numpy())
        return {"test_auc": m["auc"], "test_logloss": m["logloss"], "train_rows": int(Xtr.shape[0]),
                "fit_samples_per_s": Xtr.shape[0] / train_s, "seconds": time.perf_counter() - t0}

    it = _common.batch_indices(torch, Xtr.shape[0], bs, int(spec.get("seed", 2021)))

    def next_batch():
        idx = next(it)
        return batch_dict(Xtr.index_select(0, idx), ytr.index_select(0, idx))

    out = _common.time_steps(model.train_step, next_batch, spec)
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


if __name__ == "__main__":
    _common.run_worker(_common.parse_spec(), run_one)
