"""Notebook layer: what the notebooks call to stay thin (`reproduce`), the papermill runner of `ctrkit
reproduce` (`runner`), the profiles both read (`profiles`), and the peer-selector widget (`widgets`).
Needs the `notebooks` extra.
"""
from ctrkit.core.extras import check

check("notebooks", "papermill", "ipywidgets", "seaborn", what="ctrkit.notebook (`ctrkit reproduce`, the widget)")
