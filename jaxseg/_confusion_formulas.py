r"""The confusion-matrix family: formulas of four counts, names, MONAI's aliases.

Every score here is a function of four counts per (sample, class): true positives
:math:`tp`, false positives :math:`fp`, true negatives :math:`tn` and false negatives
:math:`fn`, from the statistics core (:func:`jaxseg._stats.compute_stats`, exact int32
counts of hard maps). Per batch the counts are those of each sample; for a dataset they
are the summed counts of a :class:`jaxseg.metrics.MetricState`, read by
``compute(state, metrics=...)``, so the scores are exact across batches, hosts and
devices. Both use these formulas: the per-sample functions of :mod:`jaxseg._confusion`
and ``compute`` in :mod:`jaxseg._metrics`.

The family follows MONAI ``ConfusionMatrixMetric`` (``compute_confusion_matrix_metric``)
name for name, in snake_case, with :math:`p = tp + fn` and :math:`n = fp + tn`:

- ``sensitivity`` :math:`tp / p`, ``specificity`` :math:`tn / n`,
  ``precision`` :math:`tp / (tp + fp)`, ``negative_predictive_value`` :math:`tn / (tn + fn)`;
- ``miss_rate`` :math:`fn / p`, ``fall_out`` :math:`fp / n`,
  ``false_discovery_rate`` :math:`fp / (fp + tp)`, ``false_omission_rate``
  :math:`fn / (fn + tn)`;
- ``prevalence_threshold`` :math:`(\sqrt{TPR (1 - TNR)} + TNR - 1) / (TPR + TNR - 1)`;
- ``threat_score`` :math:`tp / (tp + fn + fp)`, ``accuracy`` :math:`(tp + tn) / (p + n)`,
  ``balanced_accuracy`` :math:`(TPR + TNR) / 2`, ``f1_score`` :math:`2tp / (2tp + fn + fp)`;
- ``matthews_correlation_coefficient``
  :math:`(tp\,tn - fp\,fn) / \sqrt{(tp + fp)(tp + fn)(tn + fp)(tn + fn)}`;
- ``fowlkes_mallows_index`` :math:`\sqrt{PPV \cdot TPR}`, ``informedness``
  :math:`TPR + TNR - 1`, ``markedness`` :math:`PPV + NPV - 1`;
- ``fbeta_score`` (MONAI ``FBetaScore``)
  :math:`(1 + \beta^2) tp / ((1 + \beta^2) tp + \beta^2 fn + fp)`.

A ratio whose denominator is 0 is NaN, and a score built from an undefined rate
(TPR, TNR, PPV, NPV) is NaN, as in MONAI. MONAI's aliases (``recall``, ``tpr``,
``youden_index``, ...) are accepted as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

CONFUSION_METRICS = (
    "sensitivity",
    "specificity",
    "precision",
    "negative_predictive_value",
    "miss_rate",
    "fall_out",
    "false_discovery_rate",
    "false_omission_rate",
    "prevalence_threshold",
    "threat_score",
    "accuracy",
    "balanced_accuracy",
    "f1_score",
    "matthews_correlation_coefficient",
    "fowlkes_mallows_index",
    "informedness",
    "markedness",
)

# In compute(state)'s default dict: the family but "accuracy", whose key there is the
# scalar pixel accuracy.
STATE_DEFAULTS = tuple(name for name in CONFUSION_METRICS if name != "accuracy")

# MONAI's check_confusion_matrix_metric_name: every alias -> its short code.
_ALIASES = {
    "tpr": ("sensitivity", "recall", "hit_rate", "true_positive_rate", "tpr"),
    "tnr": ("specificity", "selectivity", "true_negative_rate", "tnr"),
    "ppv": ("precision", "positive_predictive_value", "ppv"),
    "npv": ("negative_predictive_value", "npv"),
    "fnr": ("miss_rate", "false_negative_rate", "fnr"),
    "fpr": ("fall_out", "false_positive_rate", "fpr"),
    "fdr": ("false_discovery_rate", "fdr"),
    "for": ("false_omission_rate", "for"),
    "pt": ("prevalence_threshold", "pt"),
    "ts": ("threat_score", "critical_success_index", "ts", "csi"),
    "acc": ("accuracy", "acc"),
    "ba": ("balanced_accuracy", "ba"),
    "f1": ("f1_score", "f1"),
    "mcc": ("matthews_correlation_coefficient", "mcc"),
    "fm": ("fowlkes_mallows_index", "fm"),
    "bm": ("informedness", "bookmaker_informedness", "bm", "youden_index", "youden"),
    "mk": ("markedness", "deltap", "mk"),
    "fbeta": ("fbeta_score",),
}
_CODES = {alias: code for code, aliases in _ALIASES.items() for alias in aliases}


# ------------------------------------------------------------------------- names


def metric_names(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``metrics`` (a name or a sequence of names) as a tuple, each name checked."""
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not names:
        raise ValueError("`metrics` must name at least one metric; got an empty sequence.")
    for name in names:
        if not isinstance(name, str) or name.lower().replace(" ", "_") not in _CODES:
            raise ValueError(
                f"`metrics` entries must be confusion-matrix metric names, one of "
                f"{CONFUSION_METRICS + ('fbeta_score',)} (or a MONAI alias); got {name!r}."
            )
    return names


def _codes(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_CODES[name.lower().replace(" ", "_")] for name in names)


# ----------------------------------------------------------------------- formulas


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """MONAI's ``where(denominator != 0, numerator / denominator, nan)``, NaN-safe under grad."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), jnp.nan)


def scores_of_counts(
    tp: jax.Array,
    fp: jax.Array,
    tn: jax.Array,
    fn: jax.Array,
    names: tuple[str, ...],
    beta: jax.Array | float = 1.0,
) -> dict[str, jax.Array]:
    """The named metrics of float32 counts of any (equal) shape, keyed by ``names``.

    The expressions keep MONAI's order of operations, so equal float32 counts give the
    same values; only the Matthews denominator is the product of two square roots
    (MONAI: one root of the product of four factors, which overflows float32 beyond
    about 4e9 pixels per class, reached by dataset-level counts).
    """
    p, n = tp + fn, fp + tn
    tpr, tnr = _ratio(tp, p), _ratio(tn, n)
    ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    beta2 = jnp.square(jnp.asarray(beta, jnp.float32))
    formulas = {
        "tpr": lambda: tpr,
        "tnr": lambda: tnr,
        "ppv": lambda: ppv,
        "npv": lambda: npv,
        "fnr": lambda: _ratio(fn, p),
        "fpr": lambda: _ratio(fp, n),
        "fdr": lambda: _ratio(fp, fp + tp),
        "for": lambda: _ratio(fn, fn + tn),
        # 1 - tnr >= 0 is exact in float32 for tnr in [0, 1]; NaN rates stay NaN.
        "pt": lambda: _ratio(jnp.sqrt(tpr * (1.0 - tnr)) + tnr - 1.0, tpr + tnr - 1.0),
        "ts": lambda: _ratio(tp, tp + fn + fp),
        "acc": lambda: _ratio(tp + tn, p + n),
        "ba": lambda: (tpr + tnr) / 2.0,
        "f1": lambda: _ratio(tp * 2.0, tp * 2.0 + fn + fp),
        "mcc": lambda: _ratio(
            tp * tn - fp * fn, jnp.sqrt((tp + fp) * (tp + fn)) * jnp.sqrt((tn + fp) * (tn + fn))
        ),
        "fm": lambda: jnp.sqrt(ppv * tpr),
        "bm": lambda: tpr + tnr - 1.0,
        "mk": lambda: ppv + npv - 1.0,
        "fbeta": lambda: _ratio((1.0 + beta2) * tp, (1.0 + beta2) * tp + beta2 * fn + fp),
    }
    return {name: formulas[code]() for name, code in zip(names, _codes(names), strict=True)}
