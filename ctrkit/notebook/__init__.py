"""Notebook layer: what the notebooks call to stay thin (`reproduce`), the papermill runner of `ctrkit
reproduce` (`runner`), the profiles both read (`profiles`), the files a reproduction writes and their
`owned` records (`outputs`), and the peer-selector widget (`widgets`).

The runner and the widget need the `notebooks` extra and say so in one line where they start
(`runner.run`, importing `widgets`); the profiles and the runner's cost model (`runner.estimate`) do
not, so a bare GPU machine prices a profile from epochs timed there (`bench/gpu_check.py`).
"""
