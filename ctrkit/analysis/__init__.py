"""Analysis: the paper's tables (paired differences with confidence intervals) and figures, read from
the results store only (`tables`, `plots`). Imports experiments and below; never trains.
"""
