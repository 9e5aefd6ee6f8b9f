"""The results store's record: one peer of one run (a mutual run or a baseline), its fields listed
once (`Record`, `FIELDS`) and built by one function (`make_records`).

A field a kind of run does not have (a baseline's warm-up, a mutual run's checkpoint) is `ABSENT` and
left out of the stored line, so records keep the keys they have always had.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

__all__ = ["Record", "FIELDS", "CORE_FIELDS", "ABSENT", "make_records"]


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def _core() -> Any:
    """A field every record carries, shown first in the tidy frame (`ctrkit.experiments.store.COLUMNS`)."""
    return dataclasses.field(metadata={"core": True})


@dataclasses.dataclass(kw_only=True)
class Record:
    """One store line: a peer of a run. Run-wide fields first, then the peer's, in stored order."""

    run_key: str = _core()
    settings_key: str
    tag: str | None
    dataset: str = _core()
    protocol: str | None
    fingerprint: str = _core()
    mode: str = _core()  # mutual, alone, kd, ensemble or baseline
    init: str | None = _core()  # scratch / pretrained (None: a baseline)
    seed: int = _core()
    peer_seed: int  # the seed this peer's init drew from
    n_peers: int = _core()
    peer_index: int = _core()
    peer: str = _core()  # its label in the run (DeepFM_2 for a repeat)
    model: str
    peers: str = _core()  # every label, "+"-joined
    partners: list = _core()
    weight: float | None = _core()
    divergence: str | None = _core()
    share_embedding: bool = ABSENT  # only when true: the peers used one embedding table
    warmup_steps: int = ABSENT
    preset: str = _core()
    amp: str
    epochs: int = _core()  # epochs that ran
    max_epochs: int
    run_batch_size: int = ABSENT  # the batch the run trained with (the spec's, else its first peer's preset)
    stopped_early: bool | None
    epoch_cap_hit: bool | None
    finetune_lr_scale: float | None = ABSENT
    finetune_epochs: int | None = ABSENT
    trained: bool = ABSENT
    valid_auc: float = _core()
    valid_logloss: float = _core()
    test_auc: float = _core()
    test_logloss: float = _core()
    best_epoch: int | None
    pretrained_valid_auc: float | None = ABSENT
    pretrained_valid_logloss: float | None = ABSENT
    pretrained_test_auc: float | None = _core()
    pretrained_test_logloss: float | None = ABSENT
    partners_pretrained_auc: list = _core()
    ensemble_valid_auc: float | None = ABSENT
    ensemble_test_auc: float | None = _core()
    ensemble_test_logloss: float | None = _core()
    # prediction churn on test against the run's other peers, averaged over them (`ctrkit.experiments.churn`)
    peer_churn_abs: float = ABSENT
    peer_churn_top10: float = ABSENT
    seconds: float = _core()
    checkpoint: str | None = ABSENT
    # the run key of the pretraining that wrote `checkpoint` (its result.json): a stored run is reused only
    # while its checkpoint is still that one (`runs.check_same_checkpoints`)
    checkpoint_key: str | None = ABSENT
    config: dict = _core()
    env_info: dict | None = _core()
    distributed: dict = ABSENT

    def to_dict(self) -> dict:
        """The stored line (ABSENT fields left out)."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not ABSENT}


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record))
CORE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record) if f.metadata.get("core"))


def make_records(run: dict, peers: Sequence[dict]) -> list[dict]:
    """One stored record per peer: `run` holds the run-wide fields, `peers[k]` peer k's (its `peer`
    label, scores, ...); what follows from the peer set (n_peers, peer_index, peers, partners and
    their pretrained AUCs) is filled in here. Unknown fields are an error (TypeError)."""
    labels = [p["peer"] for p in peers]
    out = []
    for k, p in enumerate(peers):
        partners = [j for j in range(len(peers)) if j != k]
        out.append(Record(**run, **p, n_peers=len(peers), peer_index=k, peers="+".join(labels),
                          partners=[labels[j] for j in partners],
                          partners_pretrained_auc=[peers[j]["pretrained_test_auc"] for j in partners]).to_dict())
    return out
