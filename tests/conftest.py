"""Shared fixtures: small synthetic datasets, prepared once per test session."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from ctrkit import data

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """/work/shared (real data samples, BARS anchors); skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real samples and anchors live outside the repo)")
    return SHARED


@pytest.fixture(scope="session")
def criteo_small(tmp_path_factory) -> data.CTRData:
    """4,000 synthetic Criteo rows, x4_001 protocol (3,200 / 400 / 400)."""
    return data.synthetic_dataset("criteo", 4000, tmp_path_factory.mktemp("criteo_small"), seed=2021)


@pytest.fixture(scope="session")
def avazu_small(tmp_path_factory) -> data.CTRData:
    """4,000 synthetic Avazu rows, x4_001 protocol (3,200 / 400 / 400)."""
    return data.synthetic_dataset("avazu", 4000, tmp_path_factory.mktemp("avazu_small"), seed=2021)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh folder on a real tmpfs of that size (a disk that fills up), unmounted
    after the test; skips where tmpfs cannot be mounted (not root)."""
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]}); needs root")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared 2-core machine one thread is many
    times faster than two spinning against other processes, and results do not depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
