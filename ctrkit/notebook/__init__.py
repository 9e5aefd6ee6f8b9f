"""Notebook layer: what the notebooks call to stay thin and the papermill runner of `ctrkit
reproduce` (`reproduce`), and the peer-selector widget (`widgets`). Needs the `notebooks` extra.
"""
