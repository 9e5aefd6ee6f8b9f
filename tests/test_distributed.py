"""Distributed mutual learning on CPU with gloo: real multi-process runs on 127.0.0.1 only.

The reference is the single-process `experiments.run_one` / `mutual_fit` with the same seeds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import free_port
import torch

from ctrkit import cli, experiments
from ctrkit.training import distributed
from ctrkit.training.distributed import Layout, comm_bytes_per_step, shard_of
from ctrkit.training.losses import peer_loss
from ctrkit.models import build
from ctrkit.experiments.store import ResultsStore
from ctrkit.core.utils import CtrkitError, seed_everything

PEERS = "DeepFM,DCN"
SEED = 7
EPOCHS = 2
WARMUP = 3  # the first step has mutual weight 0: no gather (covered by the equality tests too)
LAUNCH_TIMEOUT = 180  # a hung run fails the test instead of hanging CI




def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", CTRKIT_DIST_TIMEOUT="60", **extra)
    return env


def _mutual_args(data_dir, out: Path, store: Path, preset: str = "smoke", epochs: int = EPOCHS) -> list[str]:
    return ["mutual", "--distributed", "--data", str(data_dir), "--peers", PEERS, "--init", "scratch",
            "--seed", str(SEED), "--preset", preset, "--epochs", str(epochs), "--warmup-steps", str(WARMUP),
            "--device", "cpu",
            "--store", str(store), "--out", str(out), "--json"]


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` (torchrun) on loopback, as a user launches it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "ctrkit.cli", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _launch_ranks(nproc: int, script: list[str], env_extra: dict | None = None) -> list[subprocess.Popen]:
    """The ranks started by hand with the env:// variables (what torchrun does on each host),
    so each rank's own exit code and message are visible."""
    port = free_port()
    procs = []
    for r in range(nproc):
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(nproc),
                   LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(nproc), **(env_extra or {}))
        procs.append(subprocess.Popen([sys.executable, *script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=LAUNCH_TIMEOUT)
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON summary in stdout:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _rel_diff(a: dict, b: dict) -> float:
    va = torch.cat([v.float().flatten() for v in a.values()])
    vb = torch.cat([b[k].float().flatten() for k in a])
    return float((va - vb).norm() / va.norm())


# ---------------------------------------------------------------- no processes


def test_layout_maps_ranks_to_peers_and_shards():
    lay = Layout(world_size=4, n_peers=2)
    assert lay.replicas == 2
    assert [lay.peer_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [lay.replica_of(r) for r in range(4)] == [0, 1, 0, 1]
    assert lay.peer_ranks(1) == [2, 3]
    assert lay.shard_ranks(1) == [1, 3]  # one rank per peer, in peer order
    one = Layout(world_size=3, n_peers=3)
    assert one.replicas == 1 and one.shard_ranks(0) == [0, 1, 2]
    with pytest.raises(CtrkitError, match="3 ranks .* cannot host 2 peers"):
        Layout(world_size=3, n_peers=2)


def test_shards_cover_the_batch_and_scales_average_to_one():
    idx = torch.arange(11)
    parts = [shard_of(idx, 3, r) for r in range(3)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)
    assert [p.numel() for p, _ in parts] == [4, 4, 3]
    # DDP averages over the 3 replicas: the scaled shard losses must weigh rows as the full mean
    assert sum(s for _, s in parts) / 3 == pytest.approx(1.0)
    part, scale = shard_of(idx, 1, 0)
    assert torch.equal(part, idx) and scale == 1.0


def test_communication_model_formula():
    c = comm_bytes_per_step(n_peers=4, batch_size=4096, replicas=1, n_params=10**6)
    assert c["allgather_bytes"] == 3 * 4096 * 4 and c["ddp_allreduce_bytes"] == 0
    c = comm_bytes_per_step(n_peers=4, batch_size=4096, replicas=2, n_params=10**6)
    assert c["allgather_bytes"] == 3 * 2048 * 4
    assert c["ddp_allreduce_bytes"] == pytest.approx(2 * 0.5 * 10**6 * 4)


def test_sharded_scaled_loss_gives_the_full_batch_gradient(criteo_small):
    """What DDP computes for a peer with D=2 replicas (mean of the replicas' gradients of the
    scaled shard losses) equals the single-process full-batch gradient, mutual term included."""
    X, y = criteo_small.tensors("train")
    seed_everything(SEED)
    model = build("DCN", criteo_small.field_sizes, embedding_dim=4, hidden_units=[16])
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(X.shape[0], generator=g)[:301]  # odd: unequal shards
    others = torch.rand(2, 301, generator=g)

    def grads(parts):
        model.zero_grad()
        for rows, scale, cols in parts:
            (peer_loss(model(X[rows]), y[rows], others[:, cols], 0.7, "mse") * scale).backward()
        return [p.grad.clone() for p in model.parameters()]

    full = grads([(idx, 1.0, slice(None))])
    pos = torch.arange(301)
    sharded = grads([(shard_of(idx, 2, r)[0], shard_of(idx, 2, r)[1] / 2, shard_of(pos, 2, r)[0]) for r in range(2)])
    for a, b in zip(full, sharded):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


def test_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed._timeout_s(None) == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed._timeout_s(None) == 45.0
    assert distributed._timeout_s(5) == 5.0  # an explicit argument wins
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(CtrkitError, match="CTRKIT_DIST_TIMEOUT='soon': expected seconds"):
        distributed._timeout_s(None)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0")
    with pytest.raises(CtrkitError, match="must be > 0"):
        distributed._timeout_s(None)


def test_distributed_without_torchrun_is_a_clear_error(criteo_small, tmp_path, monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    rc = cli.main(_mutual_args(criteo_small.path, tmp_path / "o", tmp_path / "s.jsonl"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "ctrkit: error: --distributed: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set" in err
    assert "torchrun" in err


# ---------------------------------------------------------------- real process groups (gloo)


@pytest.fixture(scope="module")
def reference(criteo_small, tmp_path_factory):
    """The single-process run and the same run on 2 gloo ranks under torchrun."""
    root = tmp_path_factory.mktemp("dist")
    single_store = root / "single.jsonl"
    recs, _ = experiments.run_one(criteo_small, PEERS, init="scratch", mode="mutual", seed=SEED,
                                  store=single_store, preset="smoke", epochs=EPOCHS, warmup_steps=WARMUP, device="cpu",
                                  progress=False, out_dir=root / "single")
    proc = _torchrun(2, _mutual_args(criteo_small.path, root / "dist", root / "dist.jsonl"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "single": recs, "single_out": root / "single", "dist_out": root / "dist",
            "dist_store": root / "dist.jsonl", "summary": _json_line(proc.stdout), "stdout": proc.stdout}


def test_two_ranks_equal_the_single_process_run(reference):
    single, summary = reference["single"], reference["summary"]
    # one JSON summary: only rank 0 reports
    assert sum(ln.startswith("{") for ln in reference["stdout"].splitlines()) == 1
    assert summary["run_key"] == single[0]["run_key"]
    for s, d in zip(single, summary["peers"]):
        assert d["label"] == s["peer"]
        assert abs(d["test_auc"] - s["test_auc"]) <= 1e-6
        assert abs(d["valid_auc"] - s["valid_auc"]) <= 1e-6
        assert abs(d["test_logloss"] - s["test_logloss"]) <= 1e-6
    assert abs(summary["ensemble_test_auc"] - single[0]["ensemble_test_auc"]) <= 1e-6
    for k, name in enumerate(PEERS.split(",")):
        a = _weights(reference["single_out"] / f"{k}_{name}" / "best.pt")
        b = _weights(reference["dist_out"] / f"{k}_{name}" / "best.pt")
        assert _max_diff(a, b) <= 1e-6


def test_two_ranks_equal_the_single_process_run_with_dropout(criteo_small, tmp_path):
    """The quick preset (the CLI default) has dropout 0.1: each peer's masks come from its own
    stream (train.dropout_seed), so one peer per rank still equals the single process."""
    from ctrkit.training import presets
    assert presets.get("DeepFM", "quick").model["net_dropout"] > 0
    recs, _ = experiments.run_one(criteo_small, PEERS, init="scratch", mode="mutual", seed=SEED, preset="quick",
                                  epochs=1, warmup_steps=WARMUP, device="cpu", progress=False)
    proc = _torchrun(2, _mutual_args(criteo_small.path, tmp_path / "dist", tmp_path / "dist.jsonl",
                                     preset="quick", epochs=1))
    assert proc.returncode == 0, proc.stderr[-4000:]
    for s, d in zip(recs, _json_line(proc.stdout)["peers"]):
        assert abs(d["test_auc"] - s["test_auc"]) <= 1e-6
        assert abs(d["test_logloss"] - s["test_logloss"]) <= 1e-6


def test_rank0_alone_writes_store_and_results_and_counts_bytes(reference, criteo_small):
    recs = ResultsStore(reference["dist_store"]).records(latest_only=False)
    assert [r["peer"] for r in recs] == PEERS.split(",")
    assert len({r["append_id"] for r in recs}) == 1  # one append, by one rank
    result = json.loads((reference["dist_out"] / "result.json").read_text())
    d = result["distributed"]
    assert (d["world_size"], d["n_peers"], d["replicas"], d["backend"]) == (2, 2, 1, "gloo")
    # every step gathers the other peer's probabilities of the batch, float32: over an epoch that
    # is every training row once -> (P-1) * rows * 4 bytes per epoch, nothing else; except the
    # very first step (warm-up weight 0), which needs nobody's predictions
    rows = criteo_small.rows["train"]
    assert d["gather_steps"] == EPOCHS * -(-rows // 512) - 1
    assert d["allgather_bytes_received"] == (EPOCHS * rows - 512) * (2 - 1) * 4
    assert [r["allgather_bytes_received"] for r in d["per_rank"]] == [d["allgather_bytes_received"]] * 2
    # each rank keeps its own resume checkpoint
    for k, name in enumerate(PEERS.split(",")):
        assert (reference["dist_out"] / f"{k}_{name}" / f"last.rank{k}.pt").is_file()


def test_two_peers_times_two_replicas_on_four_ranks(reference, criteo_small):
    """P=2 peers x D=2 data-parallel replicas (DDP inside each peer's group): the same training up
    to float summation order (Adam turns near-zero gradients' rounding into lr-sized moves, so
    weights agree to ~1e-3 relative, not bitwise)."""
    root = reference["root"]
    proc = _torchrun(4, _mutual_args(criteo_small.path, root / "dp", root / "dp.jsonl"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _json_line(proc.stdout)
    d = summary["distributed"]
    assert (d["world_size"], d["replicas"]) == (4, 2)
    # each rank gathers only the other peer's predictions of its own shard of every batch
    rows = criteo_small.rows["train"]
    batches = ([512] * (rows // 512) + ([rows % 512] if rows % 512 else [])) * EPOCHS
    shard_rows = [[len(s) for s in torch.tensor_split(torch.arange(b), 2)] for b in batches[1:]]  # step 0: weight 0
    ranks = json.loads((root / "dp" / "result.json").read_text())["distributed"]["per_rank"]
    per_rank = [r["allgather_bytes_received"] for r in ranks]
    assert per_rank == [sum(s[rank % 2] for s in shard_rows) * 4 for rank in range(4)]
    for s, p in zip(reference["single"], summary["peers"]):
        assert abs(p["test_auc"] - s["test_auc"]) <= 2e-3
    for k, name in enumerate(PEERS.split(",")):
        a = _weights(reference["single_out"] / f"{k}_{name}" / "best.pt")
        b = _weights(root / "dp" / f"{k}_{name}" / "best.pt")
        assert _rel_diff(a, b) <= 5e-3


FAULT = textwrap.dedent("""
    # rank FAULT_RANK dies (SIGKILL) right before writing its checkpoint of epoch FAULT_EPOCH: the
    # other rank has already written that epoch, so the survivors are one epoch ahead of it
    import os, signal, sys
    from ctrkit.training import checkpoint
    save = checkpoint.torch_save_atomic
    def torch_save_atomic(obj, path):
        if (str(os.environ["RANK"]) == os.environ["FAULT_RANK"] and "last" in str(path)
                and obj.get("epoch") == int(os.environ["FAULT_EPOCH"])):
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, path)
    checkpoint.torch_save_atomic = torch_save_atomic
    from ctrkit.cli import main
    sys.exit(main())
""")


def test_killed_rank_stops_the_others_and_the_rerun_resumes(reference, criteo_small, tmp_path):
    script = tmp_path / "faulty_rank.py"
    script.write_text(FAULT)
    out, store = tmp_path / "run", tmp_path / "s.jsonl"
    args = _mutual_args(criteo_small.path, out, store)
    (rc0, _, err0), (rc1, _, _) = _wait(_launch_ranks(2, [str(script), *args],
                                                      {"FAULT_RANK": "1", "FAULT_EPOCH": "2"}))
    assert rc1 == -9  # killed
    assert rc0 == 2, err0[-3000:]
    assert "ctrkit: error: rank 0 (peer 0, replica 0): lost the other ranks during final evaluation" in err0
    assert not store.exists() and not (out / "result.json").exists()  # nothing half-done recorded

    # relaunch as it was: every rank resumes from the newest epoch all ranks have (epoch 1)
    results = _wait(_launch_ranks(2, ["-m", "ctrkit.cli", *args]))
    assert [rc for rc, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert "resuming all 2 ranks after epoch 1" in results[0][2]
    summary = _json_line(results[0][1])
    assert results[1][1].strip() == ""  # rank 1 prints nothing
    for s, d in zip(reference["summary"]["peers"], summary["peers"]):
        assert abs(d["test_auc"] - s["test_auc"]) <= 1e-6
    for k, name in enumerate(PEERS.split(",")):
        a = _weights(reference["dist_out"] / f"{k}_{name}" / "best.pt")
        b = _weights(out / f"{k}_{name}" / "best.pt")
        assert _max_diff(a, b) <= 1e-6
    assert len(ResultsStore(store).records()) == 2


def test_a_store_that_cannot_take_the_run_stops_every_rank_with_its_reason(criteo_small, tmp_path):
    """Checked on every rank alike: the other ranks used to wait for rank 0, then report it lost."""
    store = tmp_path / "events.jsonl"
    store.write_text('{"hello": 1}\n')  # another program's JSON lines: not appended to
    results = _wait(_launch_ranks(2, ["-m", "ctrkit.cli", *_mutual_args(criteo_small.path, tmp_path / "out", store)]))
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert "line 1 is not a ctrkit record" in err and "lost the other ranks" not in err, err[-2000:]
    assert store.read_text() == '{"hello": 1}\n'
