"""The bottom layer, shared by every other: the one user-facing error type (`errors`, importing
nothing heavy so the CLI can catch Ctrl-C while torch loads) and small helpers (`utils`: atomic
writes, seeding, device resolution, CPU facts and thread counts, provenance), `owned` (replacing a
file only while it holds what ctrkit wrote) and `extras` (naming the
pip extra a command needs when an optional package is missing). Imports no other layer.
"""
