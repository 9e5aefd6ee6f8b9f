"""Datasets: raw files -> processed directory (`prepare`), and loading it (`load`, `CTRData`).

Modules, bottom to top: `loading` (the processed-directory API trainers need), `schema` (dataset
descriptions), `keys` (value -> 64-bit key), `sources` (files / hub datasets as Arrow streams),
`ingest` (`prepare`, `synthetic_dataset`). Nothing here imports training or results modules.
"""
from ctrkit.data.ingest import prepare, synthetic_dataset
from ctrkit.data.keys import bucketize, hash_strings
from ctrkit.data.loading import FIRST, FORMAT_VERSION, OOV, PAD, SPLITS, CTRData, format_info, info, load
from ctrkit.data.schema import AVAZU_CAT, CRITEO_CAT, CRITEO_INT, PROTOCOLS, SCHEMAS, Protocol, Schema

__all__ = ["CTRData", "load", "info", "format_info", "prepare", "synthetic_dataset", "hash_strings",
           "bucketize", "Schema", "SCHEMAS", "Protocol", "PROTOCOLS", "SPLITS", "PAD", "OOV", "FIRST",
           "FORMAT_VERSION", "CRITEO_INT", "CRITEO_CAT", "AVAZU_CAT"]
