"""Datasets: raw files -> processed directory (`prepare`), and loading it (`load`, `CTRData`).

Modules, bottom to top: `loading` (the processed-directory API trainers need), `schema` (dataset
schemas: built-in and your own), `keys` (value -> 64-bit key), `sources` and `hub` (files, hub
datasets as Arrow streams), `inputs` (which of them reads an input), `joins` (a schema's `join` and
`derive`), `encode` (a block -> keys and codes, splits, vocabularies), `outdir` (what an output may
replace), `ingest` (`prepare`, `synthetic_dataset`), `subset` (`train_share`: a share of the
training rows, for a weaker baseline that still converges). Nothing here imports
training or results modules.
"""
from ctrkit.data.ingest import prepare, resolve_schema, synthetic_dataset
from ctrkit.data.keys import bucketize, hash_strings
from ctrkit.data.loading import (FIRST, FORMAT_VERSION, OOV, PAD, SPLITS, CTRData, SmallDataWarning, format_info, info,
                                 load, small_data)
from ctrkit.data.subset import train_share
from ctrkit.data.schema import (AVAZU_CAT, BUILTIN, CRITEO_CAT, CRITEO_INT, FRAPPE_CAT, MOVIELENS_CAT, PROTOCOLS,
                                DatasetSchema, Label, Numeric, Protocol, Split, Time, builtin, load_schema)

__all__ = ["CTRData", "load", "info", "format_info", "small_data", "SmallDataWarning", "prepare", "synthetic_dataset",
           "resolve_schema", "train_share",
           "hash_strings", "bucketize", "DatasetSchema", "Label", "Numeric", "Time", "Split", "load_schema",
           "builtin", "BUILTIN", "Protocol", "PROTOCOLS", "SPLITS", "PAD", "OOV", "FIRST", "FORMAT_VERSION",
           "CRITEO_INT", "CRITEO_CAT", "AVAZU_CAT", "FRAPPE_CAT", "MOVIELENS_CAT"]
