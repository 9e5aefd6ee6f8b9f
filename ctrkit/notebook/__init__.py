"""Notebook layer: what the notebooks call to stay thin and the papermill runner of `ctrkit
reproduce` (`reproduce`), and the peer-selector widget (`widgets`). Needs the `notebooks` extra.
"""
from ctrkit.core.extras import check

check("notebooks", "papermill", "ipywidgets", "seaborn", what="ctrkit.notebook (`ctrkit reproduce`, the widget)")
