"""Graph mode: the whole training step of this process's peers, captured once as one CUDA graph and replayed.

On CUDA an eager step is launch-bound: hundreds of small kernels, each issued from Python (one H200,
DeepFM at batch 10,000: 4.8 ms eager in fp32 and bf16 alike, 3.0 ms as one graph in bf16;
../shared/anchors/gpu-h200/README.md). `GraphStep` captures everything one step of a run does,
for all local peers: the batch `index_select` from the device-resident split (a static index
buffer refilled before each replay), every peer's forward (autocast without its weight cache), the
detached targets, each trained peer's loss, backward, gradient clipping and optimizer step (Adam
made capturable, its lr a device tensor that the plateau schedule fills in place), the loss sums
and the first non-finite step (device tensors that the loop drains when it checks).

What stays eager, around the graph: a batch of another size (the last partial one), the steps of a
mutual-weight warm-up (the weight is a constant of the graph), evaluation and every host-side
decision. LR decay changes a tensor; an early stop (a peer turns into a frozen teacher in eval
mode, no longer updated) selects another graph: the capture is keyed by which peers train, at
most one per peer that stops. With several peers each runs its forward, and later its loss,
backward and update, on its own CUDA stream inside the graph (`OVERLAP_PEERS`), so the peers'
kernels overlap; the streams join before the targets are stacked and at the end of the step
(peers that share a parameter, `share_embedding`, stay on one stream: they update it in turn).

Same seed, same losses as eager within float tolerance (a `gpu` test and bench/gpu_check.py): the
kernels are the same. Dropout masks are the exception: eager reseeds before each peer's forward
(`ctrkit.training.rng.dropout_seed`), a graph has one random stream, reseeded before each replay
from the step's seed, so with dropout the masks differ from eager (same distribution, still
reproducible). `graph="auto"` tries this on CUDA for one run of local peers and, if the capture
fails, warns once and trains eagerly; "on" makes any reason not to an error; "off" never tries.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import torch

from ctrkit.core.errors import CtrkitError
from ctrkit.training.losses import peer_loss, warmup_weight
from ctrkit.training.precision import amp_context
from ctrkit.training.rng import dropout_seed

__all__ = ["OVERLAP_PEERS", "wanted", "capture_cuda", "portable_optimizer_state", "GraphStep"]

# Several peers of a step on separate CUDA streams inside the graph (bench/gpu_check.py times both).
OVERLAP_PEERS = True
# Eager steps run on a side stream before the capture (lazy allocations, cuBLAS workspaces); their
# effects on weights and optimizer state are undone (`_rewound`).
WARMUP_STEPS = 2
# The graph's one dropout stream (every peer's masks come from it): no model's (`rng.dropout_stream`).
GRAPH_STREAM = (0, 0)


def wanted(mode: str, device: torch.device, *, local: bool, runs: int = 1) -> bool:
    """Whether a run tries graph mode: `mode` auto/on, a CUDA device, one run (no replicas) of
    peers in this process (no --distributed). "on" where it cannot be is a one-line CtrkitError."""
    if mode == "off":
        return False
    device = torch.device(device)
    why = (f"needs a CUDA device; this run is on {device}" if device.type != "cuda" else
           "is for one run whose peers are all in this process (not --seeds replicas, not --distributed)"
           if runs > 1 or not local else None)
    if why is None:
        return True
    if mode == "on":
        raise CtrkitError(f"graph=on {why}; use graph=auto or graph=off")
    return False


def capture_cuda(step: Callable[[], None]) -> Callable[[], None]:
    """`step` captured as a torch.cuda.CUDAGraph after WARMUP_STEPS eager runs on a side stream
    (the caller undoes their effects); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return g.replay


def _make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Adam as a graph can replay it: `capturable`, and its lr a device tensor (the plateau
    schedule then fills it in place, torch's `_update_param_group_val`)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def portable_optimizer_state(state: dict) -> dict:
    """An optimizer's state_dict as an eager run on any device loads it: lr a float, not capturable
    (no-op for an optimizer graph mode never touched)."""
    groups = [{**g, "lr": float(g["lr"]), "capturable": False} if isinstance(g.get("lr"), torch.Tensor) else g
              for g in state["param_groups"]]
    return {**state, "param_groups": groups}


@contextlib.contextmanager
def _rewound(peers: Sequence, extra: Sequence[torch.Tensor]):
    """Undo what the capture's warm-up steps changed: weights, buffers, optimizer moments (a moment
    they created goes back to Adam's initial zeros) and `extra` tensors."""
    trained = [p for p in peers if p.trainable]
    opt_tensors = [v for p in trained for st in p.optimizer.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor)]
    saved = [(t, t.detach().clone()) for p in peers for t in p.model.state_dict().values()]
    saved += [(t, t.detach().clone()) for t in [*opt_tensors, *extra]]
    had = [set(p.optimizer.state) for p in trained]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
            for p, before in zip(trained, had):
                for param, st in p.optimizer.state.items():
                    if param not in before:
                        for v in st.values():
                            if isinstance(v, torch.Tensor):
                                v.zero_()


def _after_failed_capture(device: torch.device) -> None:
    """A capture that raised inside `torch.cuda.graph` leaves its capture stream current: back to the
    device's default stream, everything finished, so the eager steps that follow start clean."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.set_stream(torch.cuda.default_stream(device))
            torch.cuda.synchronize(device)


def _branches(fns: Sequence[Callable], streams: Sequence | None) -> list:
    """Each fn's value, each fn on its own stream when `streams` is given (every stream waits for
    the current one first, the current one for all of them at the end)."""
    if streams is None:
        return [fn() for fn in fns]
    main = torch.cuda.current_stream()
    out = []
    for fn, s in zip(fns, streams):
        s.wait_stream(main)
        with torch.cuda.stream(s):
            out.append(fn())
    for s in streams:
        main.wait_stream(s)
    return out


class GraphStep:
    """One run's training steps as graph replays (see the module docstring); `try_step` says
    whether it took a step, else the loop runs that step eagerly. `capture(step) -> replay` is
    `capture_cuda` unless given (the tests' way to exercise it on a CPU)."""

    def __init__(self, run, Xtr: torch.Tensor, ytr: torch.Tensor, *, capture: Callable | None = None,
                 overlap: bool | None = None):
        self.run, self.Xtr, self.ytr = run, Xtr, ytr
        self.capture = capture or capture_cuda
        device, n = Xtr.device, len(run.peers)
        self.idx = torch.zeros(run.config.batch_size, dtype=torch.long, device=device)
        self.step_no = torch.zeros((), dtype=torch.int64, device=device)
        self.sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(n)]
        self.first_bad = [torch.full((), -1, dtype=torch.int64, device=device) for _ in range(n)]
        overlap = (OVERLAP_PEERS if overlap is None else overlap) and n > 1 and device.type == "cuda"
        # peers that share a parameter (share_embedding: one table) update it one after another, as eager does
        params = [id(q) for p in run.peers for q in p.model.parameters()]
        self.streams = [torch.cuda.Stream(device) for _ in range(n)] if overlap and len(set(params)) == len(params) \
            else None
        self.key, self.replay, self.failed, self.captures = None, None, False, 0
        self.lrs: list[tuple[dict, torch.Tensor]] = []  # (param group, the lr tensor the graph reads)

    @property
    def status(self) -> str:
        """What a result's env records: on (replayed), fallback (the capture failed), off (never captured)."""
        return "fallback" if self.failed else "on" if self.captures else "off"

    def try_step(self, idx: torch.Tensor, step: int) -> bool:
        """Run step `step` of the epoch (rows `idx`) as a replay; False: the loop runs it eagerly."""
        run, cfg = self.run, self.run.config
        if self.failed or len(idx) != len(self.idx) or \
                warmup_weight(cfg.weight, run.st.global_step, cfg.warmup_steps) != cfg.weight:
            return False
        self.idx.copy_(idx, non_blocking=True)
        key = tuple(p.training for p in run.peers)
        if key != self.key and not self._capture(key):
            return False
        self._sync_lr()
        self.step_no.fill_(step)
        if any(p.drops and p.training for p in run.peers):
            torch.manual_seed(dropout_seed(cfg.seed, run.st.global_step, GRAPH_STREAM, run.exchange.replica))
        self.replay()
        return True

    def _sync_lr(self) -> None:
        """The graph reads each group's lr tensor: a schedule that put a float there instead (torch
        versions without `_update_param_group_val`) has its value copied in, the tensor put back."""
        for group, t in self.lrs:
            if group["lr"] is not t:
                t.fill_(float(group["lr"]))
                group["lr"] = t

    def drain(self, loss_sums: torch.Tensor, checks: Sequence) -> None:
        """Add the replayed steps' loss sums and first non-finite steps to the loop's (`loss_sums[k]`,
        `checks[k].first_bad`: the earliest step wins) and start counting afresh."""
        for k, check in enumerate(checks):
            loss_sums[k] += self.sums[k]
            mine, theirs = self.first_bad[k], check.first_bad
            check.first_bad = torch.where((theirs < 0) | ((mine >= 0) & (mine < theirs)), mine, theirs)
            self.sums[k].zero_()
            self.first_bad[k].fill_(-1)

    def _capture(self, key: tuple) -> bool:
        """Capture the step for the peers that train now (`key`); on failure warn once (auto) or raise (on)."""
        self.replay, self.key = None, None  # the previous graph and its memory go first
        device = self.Xtr.device
        try:
            if device.type == "cuda":
                for p in self.run.peers:
                    if p.trainable:
                        _make_capturable(p.optimizer, device)
                self.lrs = [(g, g["lr"]) for p in self.run.peers if p.trainable for g in p.optimizer.param_groups]
            with _rewound(self.run.peers, [*self.sums, *self.first_bad]):
                self.replay = self.capture(self._step)
        except Exception as e:  # noqa: BLE001  (any failure to capture means: train eagerly)
            _after_failed_capture(device)
            e = e.__context__ or e  # the op that broke the capture, not capture_end's complaint about it
            first = (str(e).strip().splitlines() or [""])[0][:200]
            if self.run.config.graph == "on":
                raise CtrkitError(f"graph=on: capturing the training step failed: {type(e).__name__}: {first}") from None
            self.failed = True
            warnings.warn(f"graph=auto: capturing the training step as a CUDA graph failed ({type(e).__name__}: "
                          f"{first}); this run trains eagerly", RuntimeWarning, stacklevel=2)
            return False
        self.key, self.captures = key, self.captures + 1
        return True

    def _step(self) -> None:
        """The captured step: the batch, every peer's logits, the targets, each trained peer's update."""
        run, cfg = self.run, self.run.config
        xb, yb = self.Xtr.index_select(0, self.idx), self.ytr.index_select(0, self.idx)
        with amp_context(xb.device, run.amp_dtype, cache=False):
            logits = _branches([lambda p=p: p.logits(xb) for p in run.peers], self.streams)
        probs = (torch.stack([torch.sigmoid(z.detach()) for z in logits])
                 if run.gathers and cfg.weight > 0 else None)
        _branches([lambda k=k, p=p: self._update(k, p, logits[k], yb, probs) for k, p in enumerate(run.peers)],
                  self.streams)
        # xb, yb, logits and probs, read across streams, are freed only here, after the join

    def _update(self, k: int, p, z: torch.Tensor, yb: torch.Tensor, probs: torch.Tensor | None) -> None:
        """Peer k's loss, backward, clipping and optimizer step, its loss sum and non-finite record."""
        if not p.training:
            return
        cfg = self.run.config
        targets = probs.index_select(0, p.teachers) if probs is not None else z.new_empty(0, len(yb))
        loss = peer_loss(z, yb, targets, cfg.weight, cfg.divergence, cfg.mode)
        p.step(loss)
        loss = loss.detach()
        self.sums[k] += loss
        bad = (self.first_bad[k] < 0) & ~torch.isfinite(loss)
        self.first_bad[k].copy_(torch.where(bad, self.step_no, self.first_bad[k]))
