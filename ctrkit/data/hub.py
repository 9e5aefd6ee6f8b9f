"""`prepare` inputs from Hugging Face: a `datasets` Dataset/DatasetDict, or a hub id (hf://...)."""
from __future__ import annotations

import hashlib
import os

from ctrkit.data.loading import SPLITS
from ctrkit.data.schema import DatasetSchema
from ctrkit.data.sources import SPLIT_NAMES, Part, as_dictionary_table, lacks_columns
from ctrkit.core.errors import CtrkitError
from ctrkit.core.extras import require


def dataset_parts(ds, schema: DatasetSchema, name: str) -> list[Part]:
    """Parts from a `datasets.Dataset` / `DatasetDict` (hub id or local files)."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        splits = {None: ds}
    else:
        keys = list(ds.keys())
        found = {}
        for ours, aliases in SPLIT_NAMES.items():
            hit = [k for k in keys if k.lower() in aliases]
            if hit:
                found[ours] = ds[hit[0]]
        if set(found) == set(SPLITS):
            splits = found
        elif "train" in found and len(keys) == 1:
            splits = {None: found["train"]}
        else:
            raise CtrkitError(f"{name}: expected splits train/valid(ation)/test or one train split, "
                              f"got {', '.join(keys) or 'none'}")
    parts = []
    for split, d in splits.items():
        lower = {c.lower(): c for c in d.column_names}
        missing = [c for c in schema.used_columns if c not in d.column_names and c.lower() not in lower]
        columns = {c: c if c in d.column_names else lower[c.lower()] for c in schema.used_columns
                   if c not in missing}
        if missing:
            lacks = lacks_columns("dataset", missing, d.column_names, columns.values(), schema.name)
            raise CtrkitError(f"{name}: {lacks}")
        named = {v.lower() for v in columns.values()} | {c.lower() for c in schema.drop}

        def batches(d=d, columns=columns):
            for t in d.with_format("arrow").iter(batch_size=1 << 17):
                yield as_dictionary_table(t, columns)

        fp = getattr(d, "_fingerprint", None) or hashlib.sha256(repr(d).encode()).hexdigest()
        parts.append(Part(name=f"{name}[{split or 'train'}]", split=split, open=batches,
                           first_line=1, columns=columns, fingerprint=str(fp), size=0,
                           ignored=tuple(c for c in d.column_names if c.lower() not in named)))
    return parts


def hub_parts(hub_id: str, schema: DatasetSchema) -> list[Part]:
    datasets = require("hub", "datasets", what=f"hf://{hub_id}")

    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE") or \
        os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "TRUE")
    if not offline:
        check_hub_reachable(hub_id)
    try:
        ds = datasets.load_dataset(hub_id)
    except Exception as e:  # datasets raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CtrkitError(f"hf://{hub_id}: cannot load from the Hugging Face hub: {first}") from None
    return dataset_parts(ds, schema, f"hf://{hub_id}")


def check_hub_reachable(hub_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes of retries, when the hub cannot be reached."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/datasets/{hub_id}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 404):
            raise CtrkitError(f"hf://{hub_id}: no such dataset on {endpoint} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CtrkitError(f"hf://{hub_id}: cannot reach the Hugging Face hub at {endpoint} "
                          f"({reason}); download the files and pass --raw DIR, or set "
                          f"HF_HUB_OFFLINE=1 to use the local cache") from None


