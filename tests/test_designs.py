"""ctrkit.experiments.designs: the partner subsets of the peer-count design and the selection on validation only."""
import itertools
from math import comb

import pandas as pd
import pytest

from ctrkit.experiments import designs
from ctrkit.core.utils import CtrkitError

POOL = list(designs.PAPER_MODELS)


@pytest.mark.parametrize("target", POOL)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_partner_subsets_are_every_subset_of_the_others(target, n):
    subsets = designs.partner_subsets(target=target, pool=POOL, n_peers=n)
    others = [m for m in POOL if m != target]
    assert len(subsets) == comb(3, n - 1) == len(set(subsets))
    assert all(len(s) == n - 1 and target not in s and set(s) <= set(others) for s in subsets)
    # every model of the pool is a partner equally often: no model is favoured by the design
    counts = pd.Series([m for s in subsets for m in s]).value_counts()
    assert n == 1 or (counts.nunique() == 1 and set(counts.index) == set(others))


def test_default_pool_is_the_papers_four_models():
    assert POOL == ["DeepFM", "DCN", "PNN", "FiBiNET"] and "FM" not in POOL
    assert designs.partner_subsets(target="DCN", n_peers=2) == [("DeepFM",), ("PNN",), ("FiBiNET",)]


def test_peer_count_sets_cover_every_design_point_once():
    sets = designs.peer_count_sets(pool=POOL)
    assert len(sets) == comb(4, 2) + comb(4, 3) + comb(4, 4) == 11
    keys = {"+".join(s) for s in sets}
    for target, n in itertools.product(POOL, [2, 3, 4]):
        for partners in designs.partner_subsets(target=target, pool=POOL, n_peers=n):
            assert "+".join(designs.peer_set(target=target, partners=partners, pool=POOL)) in keys
    assert designs.peer_count_sets(pool=POOL, max_peers=2) == [list(p) for p in itertools.combinations(POOL, 2)]


def test_bad_design_arguments_are_errors():
    with pytest.raises(CtrkitError, match="n_peers must be an integer in 1..4"):
        designs.partner_subsets(target="DCN", pool=POOL, n_peers=5)
    with pytest.raises(CtrkitError, match="not in the pool"):
        designs.peer_set(target="FM", partners=["DCN"], pool=POOL)
    with pytest.raises(CtrkitError, match="without repeats"):
        designs.peer_count_sets(pool=["DCN", "DCN"])
    with pytest.raises(CtrkitError, match="non-negative"):
        designs.sweep_grid(weights=[-1], lr_scales=[0.1])


def test_sweep_grid():
    grid = designs.sweep_grid(weights=[0.3, 1, 3, 10, 30], lr_scales=[0.1, 1])
    assert len(grid) == 10 and grid[0] == {"weight": 0.3, "finetune_lr_scale": 0.1}


def test_choose_on_validation_ignores_the_test_split():
    df = pd.DataFrame({"weight": [1, 1, 10, 10], "finetune_lr_scale": [0.1] * 4, "model": ["A", "B"] * 2,
                       "valid_auc": [0.70, 0.72, 0.71, 0.73], "valid_logloss": [0.5] * 4,
                       "test_auc": [0.99, 0.99, 0.50, 0.50]})
    best = designs.choose_on_validation(df)
    assert best["weight"].tolist() == [10] and best["selection_valid_auc"].iloc[0] == pytest.approx(0.72)
    per_model = designs.choose_on_validation(df.assign(valid_auc=[0.74, 0.72, 0.71, 0.73]), by=["model"])
    assert per_model.set_index("model")["weight"].to_dict() == {"A": 1, "B": 10}
    # a tie on AUC goes to the lower validation logloss
    tie = df.assign(valid_auc=0.7, valid_logloss=[0.5, 0.5, 0.4, 0.4])
    assert designs.choose_on_validation(tie)["weight"].tolist() == [10]
    with pytest.raises(CtrkitError, match="validation columns only"):
        designs.choose_on_validation(df, metric="test_auc")


def test_best_model_on_validation():
    df = pd.DataFrame({"model": ["A", "A", "B", "B"], "valid_auc": [0.7, 0.8, 0.76, 0.76], "test_auc": [0, 0, 1, 1]})
    assert designs.best_model(df) == "B"


def test_seeds_for_half_width_is_the_smallest_n():
    from scipy import stats

    n = designs.seeds_for_half_width(sd=0.1, half_width=0.1)
    half = lambda k: stats.t.ppf(0.975, k - 1) * 0.1 / k ** 0.5  # noqa: E731
    assert half(n) <= 0.1 < half(n - 1) and n == 7
    assert designs.seeds_for_half_width(sd=0.0, half_width=0.1) == 2
    assert designs.seeds_for_half_width(sd=float("nan"), half_width=0.1) is None


def test_edges_name_a_choice_the_search_did_not_bracket():
    tried = [{"lr": 1e-3, "reg": 1e-5}, {"lr": 3e-4, "reg": 1e-5}, {"lr": 1e-3, "reg": 0.01}]
    assert designs.edges(tried[2], tried) == {"lr": "largest", "reg": "largest"}
    assert designs.edges(tried[1], tried) == {"lr": "smallest", "reg": "smallest"}
    inner = tried + [{"lr": 3e-3, "reg": 0.01}, {"lr": 1e-3, "reg": 0.03}]
    assert designs.edges(tried[2], inner) == {}  # bracketed on both keys
    assert designs.edges({"lr": 1e-3}, [{"lr": 1e-3}]) == {}  # one value tried: no range, no edge
    assert designs.edges({"lr": None}, tried) == {}


def test_beyond_edges_steps_out_one_key_at_a_time():
    tried = [{"lr": 1e-3, "reg": 1e-5}, {"lr": 3e-4, "reg": 1e-5}, {"lr": 1e-3, "reg": 0.01}]
    assert designs.beyond_edges(tried[2], tried) == [{"lr": 0.003, "reg": 0.01}, {"lr": 0.001, "reg": 0.03}]
    assert designs.beyond_edges(tried[1], tried) == [{"lr": 0.0001, "reg": 1e-5}, {"lr": 3e-4, "reg": 3.33e-6}]
    # a step already taken is not proposed again; a bracketed choice proposes nothing
    tried += [{"lr": 0.003, "reg": 0.01}]
    assert designs.beyond_edges(tried[2], tried) == [{"lr": 0.001, "reg": 0.03}]
    assert designs.beyond_edges({"lr": 0.0, "reg": 1e-5}, [{"lr": 0.0, "reg": 1e-5}, {"lr": 1.0, "reg": 1e-5}]) == []
    assert designs.beyond_edges(tried[2], tried, factor=10) == [{"lr": 0.001, "reg": 0.1}]
    with pytest.raises(CtrkitError, match="factor"):
        designs.beyond_edges(tried[2], tried, factor=1)
