"""Writing a table for people: the human form (means with [95% CI]), captions, and Markdown, LaTeX or CSV text.

CSV stays numeric and tidy; Markdown and LaTeX show the human form, with settings that hold for every
row moved into one line under the table, and the table's caption.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ctrkit.analysis.pairing import paper_order
from ctrkit.analysis.stats import AUC_POINT, CI_NAME, LEVEL, MIN_WILCOXON, POWER
from ctrkit.core.utils import CtrkitError

FORMATS = ("md", "csv", "tex")

# Every table with a paired test says what its null results can rule out
MDE_WORDS = (f"rel_pct_mde: the smallest true rel % the paired t-test (alpha {1 - LEVEL:.2g}, uncorrected) "
             f"finds with {POWER:.0%} power at these pairs' number and spread (a null result does not rule out less).")

CAPTIONS = {
    "baselines": "Pretrained baselines: test AUC and logloss, mean ± SD over seeds; epochs run (min-max); "
                 "`flag`: seeds that stopped at the epoch cap (not converged).",
    "scratch": f"Mutual learning from scratch minus the same peers trained alone under the identical schedule "
               f"and stopping, paired by seed: mean [{CI_NAME}]; rel % and RelaImpr (gain of AUC - 0.5) in %; "
               f"p: paired t-test of the AUC difference, Holm-corrected across the models (p_holm); Wilcoxon only with >= {MIN_WILCOXON} pairs.",
    "finetune": f"Mutual finetuning minus finetuning alone (same steps, batches and stopping, weight 0), paired by "
                f"seed: mean [{CI_NAME}], at the setting chosen on validation; gains of both arms over the "
                f"pretrained model; p_holm: paired t-test of the AUC difference, Holm across the models; Wilcoxon only with >= {MIN_WILCOXON} pairs.",
    "sweep": f"Finetuning sweep (weight x lr scale): mutual - alone on test per model [{CI_NAME}]; "
             "`selection_valid_auc`: mean validation AUC of the mutual peers, the only criterion of `chosen`; "
             "p_holm: paired t-test of the AUC difference, Holm across the models of each setting (not across the sweep).",
    "partners": f"Pairs (N = 2): mutual - alone of the target with each partner, paired by seed [{CI_NAME}]; "
                "* Holm p < 0.05 (paired t-test of the AUC difference, Holm across the cells; p_holm in the CSV).",
    "partner_slopes": "Per target: least-squares slope of (mutual - alone, rel %) against the partner's "
                      "pretrained test AUC, one point per partner (means over seeds: a partner's seeds are not "
                      "independent), 95% t-interval of the slope (n_partners - 2 df: with 3 partners one df, "
                      "so descriptive); n_points: the seed-level points behind the partner means; the slope is "
                      f"in % per {AUC_POINT:g} of partner AUC (one AUC point); p_slope: the slope's t-test, "
                      "uncorrected; p_holm: Holm across the targets of the dataset.",
    "peer_count": f"N peers: per target, the mean over all partner subsets of size N - 1 of the other paper models; "
                  f"rel % = mutual - alone, gain = over the pretrained model, {CI_NAME} over seeds; N = 1: the control; "
                  "p_ttest: paired t-test of the AUC difference; p_holm: Holm across every model and N of the setting.",
    "headline": f"Mutual finetuning minus finetuning alone per model, paired by seed, at the setting chosen on "
                f"validation: relative % and RelaImpr of test AUC [{CI_NAME}], test logloss difference; "
                "p_holm: paired t-test of the AUC difference, Holm across the models; kept pretrained (m/a): the seeds whose mutual / "
                "alone arm kept its pretrained weights (no finetuning epoch beat the checkpoint on validation), "
                "in effect the pretrained model.",
    "alternatives": f"The practical alternative: a single mutually finetuned model minus the pretrained ensemble (the "
                    f"plain mean of the pretrained peers' probabilities, no training), paired by seed [{CI_NAME}], "
                    "at the setting chosen on validation; `vs_pretrained_rel_pct`: the same model minus its own "
                    "pretrained checkpoint; `share_of_ensemble_gain_pct`: 100 x mean(mutual - pretrained) / "
                    "mean(ensemble - pretrained), only where the ensemble's own gain has a 95% interval above 0; "
                    "`n_ensemble_better`: seeds in which the pretrained ensemble wins; "
                    "the best mutual model is chosen per seed on validation; p_holm: paired t-test of the AUC difference, Holm across the units.",
    "tuning": "Baseline hyperparameter search: per model, each candidate beside the preset, mean ± SD over seeds; "
              "`chosen`: the best mean validation AUC (ties: validation logloss), chosen on validation only; "
              "the test AUC is reported, never used to choose; `edge`: the chosen candidate's hyperparameters at the "
              "largest or smallest value the search tried, so the best may lie beyond (the `study` profile's "
              "search steps x3 past such an edge for `tune_widen` rounds: an edge shown here outlasted them).",
    "controls": f"Every arm minus finetuning alone of the same unit (model or ensemble = mean probability of the "
                f"peers), paired by seed [{CI_NAME}]; KD: students of the best pretrained model (chosen on validation); last arm: mutual "
                f"minus alone at the lr scale best for alone on validation (a baseline tuned for itself; Holm "
                f"within its rows); p_holm: paired t-test of the AUC difference, Holm across the rows of a dataset.",
}
CAPTIONS["power"] = (f"What the headline's null results rule out: per model, mutual - alone finetuning [{CI_NAME}] "
                     f"beside a claimed gain (the paper's largest, +0.37% on Criteo and +0.66% on Avazu, unless given); "
                     f"`claim_outside_ci`: the interval excludes it; `sd_per_seed`: the SD of the per-seed rel %; "
                     f"`seeds_for_claim`: the pairs the paired t-test (alpha {1 - LEVEL:.2g}) needs to find the claim "
                     f"with {POWER:.0%} power at that SD; `rel_pct_mde_sd_upper`: the MDE if the true SD were its "
                     f"one-sided 95% upper bound (a few seeds' SD is itself uncertain); `note`: pairs identical to the "
                     f"last bit leave the SD to the others.")
for _name in ("scratch", "finetune", "sweep", "headline", "alternatives", "controls", "power"):
    CAPTIONS[_name] += " " + MDE_WORDS


def _fmt(v, digits: int, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _digits(prefix: str) -> tuple[int, bool]:
    if "pct" in prefix:
        return 3, True
    if "diff" in prefix or prefix.startswith(("slope", "gain")):
        return 4, True
    return 4, False


def _interval(df: pd.DataFrame, p: str) -> list[str]:
    d, signed = _digits(p)
    lo, hi = df.get(f"{p}_ci_low"), df.get(f"{p}_ci_high")
    sd = df.get(f"{p}_sd")
    out = []
    for i, m in enumerate(df[f"{p}_mean"]):
        if lo is not None and not pd.isna(lo.iloc[i]):
            out.append(f"{_fmt(m, d, signed)} [{_fmt(lo.iloc[i], d, signed)}, {_fmt(hi.iloc[i], d, signed)}]")
        elif sd is not None and not pd.isna(sd.iloc[i]):
            out.append(f"{_fmt(m, d, signed)} ± {_fmt(sd.iloc[i], d)}")
        else:
            out.append(_fmt(m, d, signed))
    return out


_HIDDEN = ("settings_key", "setting_id", "intercept")
# Per-arm convergence counts: the CSV keeps them; the human form shows them in words (`flag`) and the
# epochs of both arms in one column.
_IN_FLAG = ("n_cap_hit_mutual", "n_cap_hit_alone", "n_kept_pretrained_mutual", "n_kept_pretrained_alone")
# Columns that describe the setting: when one value holds for every row, display moves it into one
# "settings" line under the table instead of repeating it in every row.
_SETTING_COLS = ("dataset", "peers", "weight", "divergence", "finetune_lr_scale", "finetune_epochs", "amp", "chosen_on",
                 "selection_valid_auc", "choice", "differs")
_INT_COLS = ("finetune_epochs", "epochs_min", "epochs_max", "n_pairs", "n_seeds", "n_subsets", "n_points",
             "n_partners", "n_cap_hit", "n_peers", "mutual_epochs_max", "alone_epochs_max", "n_cap_hit_mutual",
             "n_cap_hit_alone", "n_kept_pretrained_mutual", "n_kept_pretrained_alone", "n_ensemble_better",
             "epochs_max", "seeds_for_claim")


def _value(c: str, v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–" if c in _INT_COLS or c in ("weight", "finetune_lr_scale", "claimed_rel_pct") or c.endswith("_mde") else ""
    if c in _INT_COLS and isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    if c in ("weight", "finetune_lr_scale"):
        return f"{v:g}"
    if c.endswith(("_mde", "_mde_sd_upper")) or c in ("claimed_rel_pct", "sd_per_seed"):
        return _fmt(float(v), 3)  # in % as the estimate beside it
    if c == "share_of_ensemble_gain_pct" and isinstance(v, (float, np.floating)):
        return f"{v:.1f}"  # a share in %: four decimals would claim a precision it has not
    if isinstance(v, (float, np.floating)):
        return _fmt(float(v), 4)
    return v


# A setting value too common to say in every Settings line: the paper's own mutual term
_UNSAID = {("divergence", "mse")}


def constant_settings(shown: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    same = [c for c in _SETTING_COLS if c in shown.columns and shown[c].astype(str).nunique() == 1]
    line = ", ".join(f"{c} {shown[c].iloc[0]}" for c in same
                     if str(shown[c].iloc[0]) not in ("", "–") and (c, str(shown[c].iloc[0])) not in _UNSAID)
    return shown.drop(columns=same), line


def display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Human form: mean with [95% CI] (or ± SD), p-values with 3 digits, partners as a matrix."""
    if name == "partners" and len(df):
        star = lambda p: " *" if isinstance(p, (float, np.floating)) and p < 0.05 else ""  # noqa: E731 (as the heatmap)
        cell = {(r.dataset, f"{r.weight:g}", f"{r.finetune_lr_scale:g}", r.target, r.partner):
                f"{_fmt(r.rel_pct_mean, 3, True)}% [{_fmt(r.rel_pct_ci_low, 3, True)}, {_fmt(r.rel_pct_ci_high, 3, True)}]"
                f"{star(getattr(r, 'p_holm', None))}" for r in df.itertuples()}
        mat = pd.Series(cell).unstack(fill_value="")
        partners = pd.Series(mat.columns)
        mat = mat[list(partners.iloc[paper_order(partners).argsort(kind="stable")])]
        mat = mat.iloc[paper_order(pd.Series(mat.index.get_level_values(-1))).argsort(kind="stable").to_numpy()]
        mat.index.names, mat.columns.name = ["dataset", "weight", "finetune_lr_scale", "target \\ partner"], None
        return mat.reset_index()
    out = {}
    same_model = "model" in df and "peer" in df and (df["model"].astype(str) == df["peer"].astype(str)).all()
    for c in df.columns:
        if c == "mutual_epochs_max" and "alone_epochs_max" in df:
            out["epochs (mutual/alone)"] = [f"{_value(c, a)}/{_value(c, b)}"
                                            for a, b in zip(df[c], df["alone_epochs_max"])]
            continue
        if c in _HIDDEN or c in _IN_FLAG or c == "alone_epochs_max" or c.endswith(("_ci_low", "_ci_high")) or (c.endswith("_sd") and c[:-3] + "_mean" in df) \
                or (c == "model" and same_model):
            continue
        if c.endswith("_mean"):
            out[c[:-5]] = _interval(df, c[:-5])
        elif c.startswith("p_"):
            out[c] = [_fmt(v, 3) for v in df[c]]
        else:
            out[c] = [_value(c, v) for v in df[c]]
    if "n_kept_pretrained_mutual" in df and "flag" not in df and "n_pairs" in df:
        # a table without the words of `flag` (the headline) still says how many finetuned arms are in
        # effect the pretrained model: a difference of such arms is the checkpoints', not the method's
        out["kept pretrained (m/a)"] = [f"{_value('n_pairs', m)}/{_value('n_pairs', a)} of {_value('n_pairs', n)}" for m, a, n in
                                        zip(df["n_kept_pretrained_mutual"], df["n_kept_pretrained_alone"], df["n_pairs"])]
    return pd.DataFrame(out)


def to_markdown(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    if not len(df):
        return f"_(no `{name}` results in the store)_"
    shown, line = constant_settings(display(name, df))
    text = shown.to_markdown(index=False, disable_numparse=True)
    cap = caption or CAPTIONS.get(name)
    return text + (f"\n\nSettings: {line}." if line else "") + (f"\n\n{cap}" if cap else "")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}"}


def tex_escape(text) -> str:
    """Plain text as LaTeX text: every special character escaped (`<` and `>` too, which the default
    OT1 font encoding would print as other glyphs); `code` spans become \\texttt{...}."""
    out, code = [], False
    for part in str(text).split("`"):
        esc = "".join(_TEX.get(ch, ch) for ch in part)
        out.append(f"\\texttt{{{esc}}}" if code and esc else esc)
        code = not code
    return "".join(out)


def to_latex(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    if not len(df):
        return f"% no {tex_escape(name)} results in the store"
    shown, line = constant_settings(display(name, df))
    cap = " ".join(t for t in (caption or CAPTIONS.get(name), f"Settings: {line}." if line else "") if t)
    # Escaped here, not by pandas: pandas leaves the caption raw and `<`/`>` in cells as they are.
    shown = shown.rename(columns=tex_escape).map(tex_escape)
    return shown.to_latex(index=False, escape=False, caption=tex_escape(cap), label=f"tab:{name}")


def to_csv(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    return df.to_csv(index=False)


def render(name: str, df: pd.DataFrame, fmt: str = "md", *, caption: str | None = None) -> str:
    """The table as Markdown (human form + caption), LaTeX (same, with \\caption) or tidy numeric CSV."""
    if fmt not in FORMATS:
        raise CtrkitError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {"md": to_markdown, "csv": to_csv, "tex": to_latex}[fmt](name, df, caption=caption)
