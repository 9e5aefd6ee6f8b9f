"""The notebooks' parameters as papermill passes them (`-p NAME VALUE`: whatever was typed, a scalar for
a list, an empty string, a number for a path): `reproduce.settings` refuses each unusable one in one
line naming the parameter, before anything is written; and 06_explore hands its profile's compute
settings to the peer selector."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from ctrkit.core.utils import MAX_SEED, CtrkitError
from ctrkit.notebook import profiles, reproduce

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("given, says", [
    ({"seeds": 2021}, "parameter seeds: expected a non-empty list of seeds, e.g. [2021], got 2021"),
    ({"seeds": "2021"}, "parameter seeds: expected a non-empty list"),
    ({"seeds": []}, "parameter seeds: expected a non-empty list"),
    ({"seeds": [-1]}, "parameter seeds: expected an integer from 0 to 2**63-1, got -1"),
    ({"seeds": [True]}, "parameter seeds: expected an integer from 0 to 2**63-1, got True"),
    ({"seeds": [2**70]}, f"parameter seeds: expected an integer from 0 to 2**63-1, got {2**70}"),
    ({"seeds": [2021.0]}, "parameter seeds: expected an integer from 0 to 2**63-1, got 2021.0"),
    ({"seeds": [2021, 2022, 2021]}, "parameter seeds: 2021 is listed twice"),
    ({"profile": ["quick"]}, "parameter profile: unknown profile ['quick']; valid: smoke, quick"),
    ({"profile": "fast"}, "parameter profile: unknown profile 'fast'"),
    ({"out": None}, "parameter out: expected a folder path, got None"),
    ({"out": 123}, "parameter out: expected a folder path, got 123"),
    ({"out": ""}, "parameter out: an empty path is the repository root"),
    ({"out": "  "}, "parameter out: an empty path is the repository root"),
    ({"data_dir": 123}, "parameter data_dir: expected a folder path, got 123"),
    ({"device": None}, "parameter device must be cpu, cuda, cuda:N or auto, got None"),
    ({"device": "gpu"}, "parameter device must be cpu, cuda, cuda:N or auto, got 'gpu'"),
    ({"device": "cuda:x"}, "parameter device"),
    ({"rows": True}, "parameter rows: expected a positive integer or None, got True"),
    ({"rows": 0}, "parameter rows: expected a positive integer or None, got 0"),
    ({"rows": 1.5}, "parameter rows"),
    ({"epochs": False}, "parameter epochs: expected a positive integer or None, got False"),
])
def test_an_unusable_parameter_is_one_line_naming_it(given, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"dataset": "criteo", "profile": "smoke", "out": str(tmp_path / "out"), **given}
    with pytest.raises(CtrkitError) as e:
        reproduce.settings(**params)
    assert str(e.value).startswith(says) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_usable_parameters_are_taken_as_given(tmp_path):
    cfg = reproduce.settings(dataset="criteo", profile="smoke", out=str(tmp_path), seeds=(2022, 2021), rows=600,
                             epochs=3, device="cuda:1", data_dir="")
    assert cfg.seeds == [2022, 2021] and cfg.rows == 600 and cfg.epochs == 3 and cfg.device == "cuda:1"
    assert cfg.data_dir is None and cfg.out == tmp_path
    assert reproduce.settings(dataset="avazu", profile="quick", out=tmp_path, seeds=[0, MAX_SEED]).seeds == [0, MAX_SEED]
    assert profiles.check_device("cuda:0") == "cuda:0"


def test_06_hands_the_profiles_compute_settings_to_the_selector():
    # the selector's runs are computed as the profile's (amp off, threads 1 on the synthetic profiles),
    # not at RunSpec's "auto" (bf16 on a CUDA or AMX machine)
    nb = nbformat.read(ROOT / "notebooks" / "06_explore.ipynb", as_version=4)
    calls = [n for c in nb.cells if c.cell_type == "code" for n in ast.walk(ast.parse(c.source))
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "widgets.PeerSelector"]
    assert len(calls) == 1
    given = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
    for name in ("preset", "device", "amp", "threads", "graph"):
        assert given.get(name) == f"cfg.{name}", (name, given)


def test_a_table_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    import pandas as pd

    (tmp_path / "afile").write_text("")
    with pytest.raises(CtrkitError, match="afile/t.csv: cannot write the table"):
        reproduce.save_table(pd.DataFrame({"a": [1]}), tmp_path / "afile" / "t")


def test_seeds_may_be_any_iterable_of_ints(tmp_path):
    import numpy as np

    for seeds in (range(2021, 2023), np.arange(2021, 2023), (s for s in (2021, 2022))):
        assert reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path), seeds=seeds).seeds == [2021, 2022]
