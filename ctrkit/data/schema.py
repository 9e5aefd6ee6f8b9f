"""The built-in dataset schemas (Criteo, Avazu) and the BARS split/min-count protocols."""
from __future__ import annotations

from dataclasses import dataclass

from ctrkit.utils import CtrkitError

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_CAT = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
             "app_category", "device_id", "device_ip", "device_model", "device_type",
             "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]


@dataclass(frozen=True)
class Schema:
    dataset: str
    label: str                  # label column name in the raw file
    raw_columns: tuple          # every column of a raw file, in order (headerless files)
    fields: tuple               # the processed fields, in order
    int_fields: tuple = ()      # Criteo integer fields (bucketed)


SCHEMAS = {
    "criteo": Schema("criteo", "label", tuple(["label"] + CRITEO_INT + CRITEO_CAT),
                     tuple(CRITEO_INT + CRITEO_CAT), tuple(CRITEO_INT)),
    # Avazu: `id` is dropped; `hour` (YYMMDDHH) becomes hour-of-day, weekday and weekend (BARS x4).
    "avazu": Schema("avazu", "click", tuple(["id", "click", "hour"] + AVAZU_CAT),
                    tuple(["hour"] + AVAZU_CAT + ["weekday", "weekend"])),
}


@dataclass(frozen=True)
class Protocol:
    name: str
    min_count: dict             # dataset -> categorical min-count (BARS min_categr_count)
    split: tuple                # train/valid/test fractions in tenths, for one unsplit input
    stratified: bool


# BARS: Criteo_x4_001 min-count 10, Avazu_x4_001 2; x4_002: 2 and 1; x1 per its yaml: 1.
# Criteo_x1's integers are numeric in BARS; here every field is categorical (int32 indices), so
# x1 buckets them like x4 does.
PROTOCOLS = {
    "x4_001": Protocol("x4_001", {"criteo": 10, "avazu": 2}, (8, 1, 1), True),
    "x4_002": Protocol("x4_002", {"criteo": 2, "avazu": 1}, (8, 1, 1), True),
    "x1": Protocol("x1", {"criteo": 1, "avazu": 1}, (7, 2, 1), False),
}


def _schema(dataset: str) -> Schema:
    if dataset not in SCHEMAS:
        raise CtrkitError(f"unknown dataset {dataset!r}; valid: {', '.join(SCHEMAS)}")
    return SCHEMAS[dataset]


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise CtrkitError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
