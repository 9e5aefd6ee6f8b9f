"""What a model must be to train (a built nn.Module whose forward returns finite float logits of shape
[B], with trainable parameters), and the one-line errors and warning a user's model gets when it is not:
through `fit`, `mutual_fit` and replicas (`fit_replicas`) alike."""
import math
import warnings

import pytest
import torch
from torch import nn

from ctrkit import models
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.training import evaluation, presets
from ctrkit.training import loop as T
from ctrkit.training.config import RunConfig, TrainConfig
from ctrkit.training.evaluation import NonFiniteLossError, looks_like_probabilities, predict
from ctrkit.training.mutual import mutual_fit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread

BUILTINS = ("LR", "FM", "DeepFM", "DCN", "PNN", "FiBiNET")
PROBS_WARNING = "every validation logit of"


def smoke(name, d, seed=7):
    seed_everything(seed)
    return models.build(name, d.field_sizes, **presets.get(name, "smoke").model)


def single(**kw) -> RunConfig:
    return RunConfig.single({**dict(epochs=1, batch_size=512, lr=1e-2, patience=2, progress=False, device="cpu",
                                    amp="off", seed=7, threads=None), **kw})


def mutual_cfg(n, mode="mutual", epochs=1) -> RunConfig:
    return RunConfig(mode=mode, weight=1.0, epochs=epochs, batch_size=512, seed=7, device="cpu", amp="off",
                     progress=False, threads=None, peers=tuple(TrainConfig(lr=1e-2) for _ in range(n)))


class Wrapped(nn.Module):
    """A built-in model behind a user's mistake: `change(logits, self, X)` is what its forward returns.
    `train_calls` counts training-mode forwards (whether a step ran)."""

    def __init__(self, inner, name, change):
        super().__init__()
        self.inner, self.change, self.name, self.hparams = inner, change, name, dict(getattr(inner, "hparams", {}))
        self.train_calls = 0

    def forward(self, X):
        self.train_calls += int(self.training)
        return self.change(self.inner(X), self, X)


def wrapped(d, name, change, base="DeepFM"):
    return Wrapped(smoke(base, d), name, change)


def probability_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if PROBS_WARNING in str(w.message)]


# ---------------------------------------------------------------- 1: the forward's output, probed before step 1


@pytest.mark.parametrize("change,match", [
    (lambda z, m, X: z.unsqueeze(-1), r"forward must return logits of shape \[B\] \(one per row\), got \[512, 1\]"),
    (lambda z, m, X: z[:5], r"forward must return logits of shape \[B\] \(one per row\), got \[5\]"),
    (lambda z, m, X: (z > 0).long(), r"forward must return floating-point logits, got torch\.int64"),
    (lambda z, m, X: (z, z), r"forward must return logits of shape \[B\] \(one per row\), got a tuple"),
])
def test_a_forward_not_of_float_logits_of_shape_b_is_one_line_before_training(criteo_small, change, match):
    d = criteo_small
    bad = wrapped(d, "Bad", change)
    with pytest.raises(CtrkitError, match=r"^peer 0 \(Bad\): " + match) as e:
        T.fit(bad, d, single())
    assert "\n" not in str(e.value) and bad.train_calls == 0  # one line, before any step
    bad = wrapped(d, "Bad", change)  # a peer of a mutual run, not the first: named by its index
    with pytest.raises(CtrkitError, match=r"^peer 1 \(Bad\): " + match):
        mutual_fit([smoke("DCN", d), bad], d, mutual_cfg(2))
    assert bad.train_calls == 0


def test_replicas_probe_every_run_and_name_it(criteo_small):
    d = criteo_small
    good, bad = (wrapped(d, "Col", lambda z, m, X: z), wrapped(d, "Col", lambda z, m, X: z.unsqueeze(-1)))
    with pytest.raises(CtrkitError, match=r"^peer 0 \(Col\) of run 1: forward must return logits of shape \[B\]"):
        T.fit_replicas([good, bad], d, [single(seed=1), single(seed=2)])


# ---------------------------------------------------------------- 2: a built model, not its class


def test_a_class_or_a_non_module_instead_of_a_built_model(criteo_small):
    d = criteo_small
    deepfm = models.MODELS["DeepFM"]
    with pytest.raises(CtrkitError, match=r"^peer 0: expected a built model \(an nn\.Module instance\), got the "
                                          r"class DeepFM: build it first \(ctrkit\.models\.build or DeepFM\(\.\.\.\)\)$"):
        T.fit(deepfm, d, single())
    with pytest.raises(CtrkitError, match=r"^peer 1: expected a built model .* got the class DCN: build it first"):
        mutual_fit([smoke("DeepFM", d), models.MODELS["DCN"]], d, mutual_cfg(2))
    with pytest.raises(CtrkitError, match=r"^peer 0: expected a built model \(an nn\.Module instance\), got str "
                                          r"'DeepFM': build it first"):
        T.fit("DeepFM", d, single())


# ---------------------------------------------------------------- 3: probabilities instead of logits


def test_a_forward_returning_probabilities_warns_once_per_peer(criteo_small):
    d = criteo_small
    prob = lambda z, m, X: torch.sigmoid(z)  # noqa: E731 - the mistake: the sigmoid inside forward
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count what the trainer warns, not what Python's filter shows
        T.fit(wrapped(d, "ProbDeepFM", prob), d, single(epochs=2, patience=5))
    assert probability_warnings(caught) == [
        "peer 0 (ProbDeepFM): every validation logit of epoch 1 is in [0, 1]: does forward return probabilities? "
        "It must return logits (ctrkit applies the sigmoid)"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mutual_fit([smoke("DCN", d), wrapped(d, "ProbDeepFM", prob)], d, mutual_cfg(2, epochs=2))
    shown = probability_warnings(caught)
    assert len(shown) == 1 and shown[0].startswith("peer 1 (ProbDeepFM): every validation logit of epoch 1")


def test_the_probability_heuristic():
    y = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert looks_like_probabilities(y, torch.sigmoid(torch.tensor([0.0, 0.3, 1.0, 0.7])))  # logits in [0, 1]
    assert not looks_like_probabilities(y, torch.sigmoid(torch.tensor([-0.01, 0.3, 1.0, 0.7])))
    assert not looks_like_probabilities(y, torch.sigmoid(torch.tensor([0.0, 0.3, 1.01, 0.7])))
    assert not looks_like_probabilities(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.full((4,), 0.6))  # click rate 0.5
    assert not looks_like_probabilities(y, torch.tensor([0.6, float("nan"), 0.6, 0.6]))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_models_never_look_like_probabilities(criteo_small, avazu_small, name):
    """At init (smoke and default hyperparameters) and after an epoch of training on both synthetic datasets."""
    for d in (criteo_small, avazu_small):
        X, y = d.tensors("valid")
        seed_everything(7)
        for model in (smoke(name, d), models.build(name, d.field_sizes)):
            assert not looks_like_probabilities(y, predict(model, X)), (name, d.dataset)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            T.fit(smoke(name, d), d, single(epochs=1))
        assert probability_warnings(caught) == [], (name, d.dataset)


# ---------------------------------------------------------------- 4: non-finite evaluation logits


def _bad_when_evaluated(value):
    """Finite while training (and at the probe before it), `value` logits at evaluation once it has trained."""
    return lambda z, m, X: z if m.training or not m.train_calls else z * 0 + value


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_validation_logits_are_an_error_naming_the_peer(criteo_small, value):
    d = criteo_small
    bad = wrapped(d, "EvalBad", _bad_when_evaluated(value))
    with pytest.raises(NonFiniteLossError, match=r"^peer 1 \(EvalBad\), epoch 1: the validation monitor is nan "
                                                 r"\(metrics \{'auc': nan, 'logloss': nan\}\)$"):
        mutual_fit([smoke("DCN", d), bad], d, mutual_cfg(2))
    with pytest.raises(NonFiniteLossError, match=r"^peer 0 \(EvalBad\), epoch 1: the validation monitor is nan"):
        T.fit(wrapped(d, "EvalBad", _bad_when_evaluated(value)), d, single())


def test_predict_turns_infinite_logits_into_nan_probabilities():
    model = Wrapped(nn.Linear(1, 1), "Inf", lambda z, m, X: X[:, 0] * torch.tensor([1.0, math.inf, -math.inf, 0.0]))
    p = predict(model, torch.ones(4, 1))
    assert p[0] == torch.sigmoid(torch.tensor(1.0)) and p[3] == 0.5 and p[1:3].isnan().all()


def test_non_finite_test_logits_are_an_error_naming_the_peer(criteo_small):
    d = criteo_small
    X_test = d.tensors("test")[0]

    def on_test(z, m, X):  # only the test split's rows (one evaluation batch: the tensor itself)
        return z * math.inf if X.data_ptr() == X_test.data_ptr() else z

    with pytest.raises(NonFiniteLossError, match=r"^peer 0 \(TestBad\), final evaluation: the test metrics are not "
                                                 r"finite \(metrics \{'auc': nan, 'logloss': nan\}\): its test logits "
                                                 r"include inf or nan"):
        T.fit(wrapped(d, "TestBad", on_test), d, single())


# ---------------------------------------------------------------- 5: non-finite from the first step


def test_non_finite_from_the_start_says_so_not_lower_the_lr(criteo_small):
    d = criteo_small
    nan = lambda z, m, X: z * math.nan  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"^peer 1 \(NaN\): the model's output is non-finite from the start"):
        mutual_fit([smoke("DCN", d), wrapped(d, "NaN", nan)], d, mutual_cfg(2))  # the probe names the peer
    # finite at the probe (eval mode), NaN in training from its first forward: the first step's loss
    train_nan = lambda z, m, X: z * math.nan if m.training else z  # noqa: E731
    with pytest.raises(NonFiniteLossError) as e:
        T.fit(wrapped(d, "TrainNaN", train_nan), d, single())
    msg = str(e.value)
    assert msg.startswith("non-finite training loss at epoch 1, step 1, the very first step: the model's output is "
                          "non-finite from the start") and "check the model's forward" in msg
    assert "checkpoint" not in msg and "lower lr" not in msg
    # from the second step on, the old advice stands (an update diverged)
    second = lambda z, m, X: z * math.nan if m.training and m.train_calls >= 2 else z  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 2; training stopped, the last good checkpoint "
                                                 r"is kept \(try a lower lr"):
        T.fit(wrapped(d, "Later", second), d, single())


def test_the_first_step_message_of_the_check_itself():
    check = evaluation.NonFiniteCheck("cpu")
    check.update(torch.tensor(math.nan), 1)
    with pytest.raises(NonFiniteLossError, match="the very first step"):
        check.check(1)
    with pytest.raises(NonFiniteLossError, match="the last good checkpoint is kept"):
        check.check(2)  # step 1 of a later epoch: updates came before it


# ---------------------------------------------------------------- 6: no trainable parameters


class NoParams(nn.Module):
    name, hparams = "NoParams", {}

    def forward(self, X):
        return X[:, 0].float() % 3 - 1.0


def test_no_trainable_parameters_names_the_peer(criteo_small):
    d = criteo_small
    with pytest.raises(CtrkitError, match=r"^make_optimizer: peer 1 \(NoParams\) has no trainable parameters: "):
        mutual_fit([smoke("DCN", d), NoParams()], d, mutual_cfg(2))
    with pytest.raises(CtrkitError, match=r"^make_optimizer: peer 0 \(NoParams\) has no trainable parameters"):
        T.fit(NoParams(), d, single())
