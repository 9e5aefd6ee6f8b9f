"""Analysis: the paper's tables (paired differences with confidence intervals) and figures, read from
the results store only. Imports experiments and below; never trains.

`records` (the store as tidy rows) -> `stats` (paired statistics) -> `pairing` (treatment vs its alone
control by seed) -> `tables` (the paper's tables) -> `frames` (what the figures draw); `render` writes a
table as Markdown, LaTeX or CSV; `plots` draws the figures.
"""
