"""Shared fixtures: small synthetic datasets, prepared once per test session."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from ctrkit import data

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = Path(__file__).resolve().parent.parent

# The import system as if the named top-level packages were not installed: every meta-path finder
# (the editable install's too) wrapped in one that does not find them, so an import fails as for a
# missing package and `importlib.util.find_spec` returns None (torch probes optional packages that
# way); every attempt is recorded. Loaded through sitecustomize, so `python -m ctrkit.cli` runs under it.
BLOCKER = textwrap.dedent("""
    import os, sys
    BLOCKED = set(os.environ["CTRKIT_TEST_BLOCK"].split(","))
    ATTEMPTS = []

    class _Hiding:
        def __init__(self, finders):
            self.finders = finders

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                return None
            for finder in self.finders:
                spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None:
                    return spec
            return None

        def invalidate_caches(self):
            for finder in self.finders:
                if hasattr(finder, "invalidate_caches"):
                    finder.invalidate_caches()

    sys.meta_path[:] = [_Hiding(list(sys.meta_path))]
""")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago (the tests' rendezvous and servers)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """/work/shared (real data samples, BARS anchors); skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real samples and anchors live outside the repo)")
    return SHARED


def small_dataset(name: str, folder) -> data.CTRData:
    """4,000 synthetic rows of `name`, x4_001 protocol (3,200 / 400 / 400), seed 2021, made in `folder`.
    Where pyarrow is missing (the GPU machine's python: `bench/gpu_session.sh`) the same call's output
    made elsewhere and carried: `$CTRKIT_TEST_DATA/<name>_small`; without it the test skips."""
    if importlib.util.find_spec("pyarrow") is None:
        made = os.environ.get("CTRKIT_TEST_DATA")
        if not made:
            pytest.skip("pyarrow is not installed and CTRKIT_TEST_DATA names no copy of the test datasets")
        return data.load(Path(made) / f"{name}_small" / "data")
    return data.synthetic_dataset(name, 4000, folder, seed=2021)


@pytest.fixture(scope="session")
def criteo_small(tmp_path_factory) -> data.CTRData:
    """4,000 synthetic Criteo rows (`small_dataset`)."""
    return small_dataset("criteo", tmp_path_factory.mktemp("criteo_small"))


@pytest.fixture(scope="session")
def avazu_small(tmp_path_factory) -> data.CTRData:
    """4,000 synthetic Avazu rows (`small_dataset`)."""
    return small_dataset("avazu", tmp_path_factory.mktemp("avazu_small"))


@pytest.fixture
def without_modules(tmp_path):
    """env(blocked) -> the environment of a subprocess in which those top-level packages cannot be
    imported (as if not installed; its `sitecustomize.ATTEMPTS` lists the tries) and ctrkit is this tree's."""
    def env(blocked) -> dict:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCKER)
        return {**os.environ, "CTRKIT_TEST_BLOCK": ",".join(blocked),
                "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    return env


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
