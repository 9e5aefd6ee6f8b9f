"""Which reader an input of `prepare` goes to: a `datasets` object or an hf:// id (`hub`), else a
file or a folder of split files (`sources`)."""
from __future__ import annotations

import os
import sys

from ctrkit.core.errors import CtrkitError
from ctrkit.data import hub
from ctrkit.data.schema import DatasetSchema
from ctrkit.data.sources import Part, resolve_files


def resolve_source(raw, schema: DatasetSchema, on_bad_lines: str) -> tuple[list[Part], dict]:
    """The parts of `raw` (file, folder, hf://id, `datasets` object) and a description of it."""
    # A Dataset object implies `datasets` is imported already; don't pay its import otherwise.
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(raw, (datasets.Dataset, datasets.DatasetDict)):
        return hub.dataset_parts(raw, schema, "datasets"), {"kind": "datasets"}
    if not isinstance(raw, (str, os.PathLike)):
        raise CtrkitError(_not_an_input(raw))
    raw_s = str(raw)
    if (schema.join or schema.derive) and raw_s.startswith("hf://"):
        raise CtrkitError(f"schema {schema.name}: join and derive read files; --raw {raw_s[:60]} is a hub dataset")
    if raw_s.startswith("hf://"):
        hub_id = raw_s[len("hf://"):].strip("/")
        if not hub_id:
            raise CtrkitError("--raw hf://<id>: the hub id is empty")
        return hub.hub_parts(hub_id, schema), {"kind": "hub", "id": hub_id}
    if schema.join or schema.derive:
        from ctrkit.data import joins

        view, sides = joins.plan(raw, schema)
        parts, source = resolve_files(raw, view, on_bad_lines)
        return joins.wrap(parts, schema, sides), source
    return resolve_files(raw, schema, on_bad_lines)


def _not_an_input(raw) -> str:
    """One line for a `raw` that is neither a path nor a `datasets` object (its str() would be a
    many-line printout taken for a file name)."""
    kind = type(raw)
    if kind.__module__.split(".")[0] == "pandas" and kind.__name__ == "DataFrame":
        return ("raw: a pandas DataFrame is not taken directly; pass datasets.Dataset.from_pandas(df, "
                "preserve_index=False) (a `datasets` Dataset or DatasetDict is), or write it to a file")
    return (f"raw: expected a file or folder path, hf://<hub id>, or a `datasets` Dataset/DatasetDict, "
            f"got {kind.__name__}")
