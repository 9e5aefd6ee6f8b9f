"""A results store with a value that is not a number in a numeric column (`abc` typed into the CSV
export, a string in a JSONL record) is a one-line error naming the file, line, column and value, in
both store forms; empty, NaN and null stay missing values, as older records and diverged runs have them.
(Coerced to NaN, the bad value left its seed out of the mean while n_seeds still counted it.)"""
import csv
import io
import json
import math

import pytest

from ctrkit import cli
from ctrkit.analysis import records
from ctrkit.core.utils import CtrkitError
from ctrkit.experiments.store import ResultsStore

AUCS = {2021: 0.7011, 2022: 0.7022, 2023: 0.7033, 2024: 0.7044, 2025: 0.7055}


def _rec(seed: int, model: str = "DeepFM", **extra) -> dict:
    r = dict(run_key=f"base|{model}|{seed}", settings_key=f"base|{model}", dataset="criteo", fingerprint="fp",
             mode="baseline", init=None, seed=seed, n_peers=1, peer_index=0, peer=model, model=model, peers=model,
             partners=[], weight=None, preset="smoke", amp="off", tag=None, test_auc=AUCS[seed],
             test_logloss=0.51, valid_auc=0.69, valid_logloss=0.52, pretrained_test_auc=None, epochs=3,
             epoch_cap_hit=False, stopped_early=True, config={"model": {"embedding_dim": 4}, "train": {"seed": seed}})
    r.update(extra)
    return r


def _store(tmp_path, **bad) -> ResultsStore:
    """Five DeepFM baselines and one DCN; seed 2021's record carries a note over two lines, so a CSV
    row is not its line number minus one; seed 2023's says "the bad row", and `bad` overrides its fields."""
    s = ResultsStore(tmp_path / "store.jsonl")
    for seed in AUCS:
        note = {2021: "first line\nsecond line", 2023: "the bad row"}.get(seed, "")
        s.append([_rec(seed, note=note, **(bad if seed == 2023 else {}))])
    s.append([_rec(2021, "DCN")])
    return s


def _line_of(path, text: str) -> int:
    """The 1-based line of `path` holding `text` (exactly one does)."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    assert len(hits) == 1, hits
    return hits[0]


def _main_error(capsys, path) -> str:
    """`ctrkit table baselines --store path`: exit 2 and one `ctrkit: error:` line, no traceback."""
    assert cli.main(["table", "baselines", "--store", str(path)]) == 2
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("ctrkit: error: ") and "Traceback" not in captured.err, err
    assert "| DeepFM" not in captured.out  # no table printed from the other seeds
    return err[0]


def _table_ok(capsys, path) -> str:
    assert cli.main(["table", "baselines", "--store", str(path)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("column, good, value", [("test_auc", "0.7033", "abc"), ("seed", "2023", "seed3"),
                                                 ("valid_logloss", "0.52", "1,5")])
def test_a_word_in_a_numeric_csv_column_names_file_line_column_and_value(tmp_path, capsys, column, good, value):
    path = _store(tmp_path).to_csv(tmp_path / "results.csv")
    lines = path.read_text().split("\n")
    n = _line_of(path, "the bad row")
    header, cells = next(csv.reader([lines[0]])), next(csv.reader([lines[n - 1]]))
    assert cells[header.index(column)] == good
    cells[header.index(column)] = value
    row = io.StringIO()
    csv.writer(row, lineterminator="").writerow(cells)  # quoted as pandas quotes (the config's JSON, "1,5")
    lines[n - 1] = row.getvalue()
    path.write_text("\n".join(lines))
    assert n > 4  # the note over two lines moved seed 2023's row one line down
    msg = _main_error(capsys, path)
    assert f"results file {path}: line {n}, column {column}: {value!r} is not a number" in msg


def test_a_string_in_a_numeric_jsonl_field_names_file_line_column_and_value(tmp_path, capsys):
    s = _store(tmp_path, test_auc="abc")
    n = _line_of(s.path, '"test_auc": "abc"')
    msg = _main_error(capsys, s.path)
    assert f"results store {s.path}: line {n}, column test_auc: 'abc' is not a number" in msg
    with pytest.raises(CtrkitError, match=f"line {n}, column test_auc: 'abc'"):
        records.records(s)  # a ResultsStore names its file too
    # a list where a number belongs, in an older store with no append stamps
    old = tmp_path / "old.jsonl"
    recs = [_rec(seed, weight=[1, 2] if seed == 2024 else None) for seed in AUCS]
    old.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert f"{old}: line 4, column weight: '[1, 2]' is not a number" in _main_error(capsys, old)


def test_empty_nan_and_null_values_still_load_as_missing(tmp_path, capsys):
    s = _store(tmp_path, test_auc=float("nan"), pretrained_test_auc="", valid_auc=None, test_logloss="NaN")
    for source in (s.path, s.to_csv(tmp_path / "results.csv")):
        df = records.records(source)
        row = df[(df["seed"] == 2023) & (df["peer"] == "DeepFM")].iloc[0]
        assert all(math.isnan(row[c]) for c in ("test_auc", "valid_auc", "pretrained_test_auc"))
        assert df.loc[df["seed"] == 2022, "test_auc"].tolist() == [0.7022]
        assert "| DeepFM" in _table_ok(capsys, source)
    # the untouched store reads as before: five seeds, their mean
    (tmp_path / "clean").mkdir()
    clean = _store(tmp_path / "clean")
    out = _table_ok(capsys, clean.to_csv(tmp_path / "clean.csv"))
    assert "| DeepFM  | 5 " in out and f"{sum(AUCS.values()) / 5:.4f}" in out
