"""Tag names and human descriptions of everything the monitor logs.

The tag patterns are fixed (docs/conventions.md): per-layer scalars ``spectral/<metric>/<layer>``
for the primary conv mode and ``spectral/<metric>.<mode>/<layer>`` for the others; model-level
aggregates ``all_layers/<key>`` (``all_layers/<key>.<mode>``; ``spectral_summary/`` before,
still read back by :func:`parse_tag`); singular-value histograms ``spectra/<mode>/<layer>``;
``alerts/active`` (rules in force), ``alerts/total`` and ``alerts/rule/<rule>`` (cumulative),
the text tags ``alerts`` and ``spectral/reasons``;
class-level statistics ``classes/<stat>/<layer>`` and their figures
``class_figures/<figure>/<layer>``. Every description says which conv mode, normalisation and
fit (or which probe and hyperedge rule) produced the number.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from svd_callback.aggregates import aggregate
from svd_callback.metric_groups import METRIC_GROUPS
from svd_callback.spectra.modes import MODES


class Family(enum.Enum):
    """The families of scalars; the value is the first part of the tag."""

    LAYER = "spectral"
    """``spectral/<metric>[.<mode>]/<layer>``: a per-layer metric."""
    SUMMARY = "all_layers"
    """``all_layers/<key>[.<mode>]``: a model-level aggregate over the layers
    (:mod:`svd_callback.aggregates`). TensorBoard's Time Series view expands the first two tag
    groups in sorted order; ``alerts`` < ``all_layers`` < ``classes`` < ``epoch`` puts the
    alerts and these aggregates there, the per-layer groups collapsed."""
    ALERTS = "alerts"
    """``alerts/<name>``: alert counts and levels."""
    CLASSES = "classes"
    """``classes/<stat>/<layer>``: a class statistic of a layer."""


ALERT_TEXT_TAG = "alerts"
REASONS_TAG = "spectral/reasons"
CONVENTIONS_TAG = "spectral/conventions"
"""The text describing a run's conventions (``SummaryWriter.add_text`` appends
``/text_summary`` to the tag)."""
EPOCH_TAG = "epoch"
SPECTRA_PREFIX = "spectra/"
LEGACY_SUMMARY = "spectral_summary"
"""The first part of the aggregates' tags before they became ``all_layers/`` (read back by
:func:`parse_tag`, so that ``svd-callback compare`` reads runs of either kind)."""
OWN_TAG_PREFIXES: tuple[str, ...] = (*(f"{f.value}/" for f in Family), SPECTRA_PREFIX,
                                     f"{LEGACY_SUMMARY}/")
"""The prefixes of every tag the callback logs (the trainer's own scalars have none of them)."""
SUMMARY_LAYER = "<model>"
"""The ``layer`` of a model-level aggregate read back by :func:`parse_tag`."""


@dataclass(frozen=True)
class Section:
    """A category of TensorBoard's custom-scalar layout.

    Attributes:
        name: its title (``alerts``, ``all layers [unfold]``, ``alpha [unfold]``, ...).
        rank: its place among the sections (compared as a tuple).
        closed: shown collapsed until the user opens it.
    """

    name: str
    rank: tuple = ()
    closed: bool = False


@dataclass(frozen=True)
class Chart:
    """One chart of TensorBoard's custom-scalar layout.

    Attributes:
        section: the category it is shown in.
        title: its title, unique within the section.
        pattern: the regular expression of the tags it overlays (a ``Multiline`` chart).
        rank: its place within the section (compared as a tuple).
        margin: for a ``Margin`` chart instead, the tags of its value, lower and upper bound:
            TensorBoard draws it unsmoothed (its smoothing setting applies to ``Multiline``
            charts only), the band between the bounds shaded.
    """

    section: Section
    title: str
    pattern: str = ""
    rank: tuple = ()
    margin: tuple[str, str, str] | None = None

    def shows(self, tag: str) -> bool:
        """Whether the chart draws ``tag``: one of its margin tags, or a match of its
        pattern."""
        if self.margin is not None:
            return tag in self.margin
        return re.search(self.pattern, tag) is not None


@dataclass(frozen=True)
class Scalar:
    """One logged scalar of one analysis: its value, what it is and where it is shown.

    Attributes:
        family: which kind of scalar (the first part of the tag).
        name: the metric (``alpha``), aggregate key (``alpha_mean``), alert scalar
            (``active``, ``rule/AlphaBelow``) or class statistic (``jaccard_mean``).
        value: the value (finite).
        description: how the number was made (shown in TensorBoard's tooltip).
        chart: the custom-scalar chart that shows it (None: none).
        layer: the layer of a per-layer or class scalar (None: model level).
        mode: the conv mode that made it (None: mode-less, e.g. alerts and classes).
        primary: whether ``mode`` is the run's primary mode (its tags carry no ``.<mode>``).
        metric: the per-layer metric it is or aggregates (None: neither).
        stat: the statistic over layers of an aggregate (``mean``, ``median``; None otherwise).
        model_level: a model-level value, put into ``trainer.callback_metrics`` (per-layer
            values only on request).
        logged: whether it reaches the loggers (False: redundant or constant, kept for
            ``callback_metrics``, the rules and the history file).
        float64: kept as float64 in ``callback_metrics`` (steps above 2**24).
    """

    family: Family
    name: str
    value: float
    description: str
    chart: Chart | None = None
    layer: str | None = None
    mode: str | None = None
    primary: bool = True
    metric: str | None = None
    stat: str | None = None
    model_level: bool = False
    logged: bool = True
    float64: bool = False

    @functools.cached_property
    def tag(self) -> str:
        """The TensorBoard tag, from the patterns of this module."""
        name = self.name if self.primary or self.mode is None else f"{self.name}.{self.mode}"
        if self.layer is None:
            return f"{self.family.value}/{name}"
        return f"{self.family.value}/{name}/{clean_layer_name(self.layer)}"


MARKDOWN_SPECIAL = ("\\", "`", "*", "_")
"""Characters TensorBoard's markdown would read as emphasis or code."""
TABLE_SPECIAL = ("|",)
"""Characters that would also end a cell of a markdown table."""


def escape_markdown(text: str, *, table: bool = False) -> str:
    """``text`` with :data:`MARKDOWN_SPECIAL` (and, with ``table``, :data:`TABLE_SPECIAL`)
    backslash-escaped: TensorBoard renders descriptions and text as markdown, where ``c*kh*kw``
    would turn to italics. The one escaper of every text the callback writes."""
    for char in (*MARKDOWN_SPECIAL, *(TABLE_SPECIAL if table else ())):
        text = text.replace(char, "\\" + char)
    return text


def alert_tag(name: str) -> str:
    """``alerts/<name>``."""
    return f"{Family.ALERTS.value}/{name}"


ALERT_RULE_NAME = "rule/"
"""The name of an ``alerts/rule/<rule>`` scalar is this followed by the rule's name."""


def alert_rule_name(rule: str) -> str:
    """``rule/<rule>``: the name of the cumulative count of alerts ``rule`` raised."""
    return ALERT_RULE_NAME + rule


def alert_rule_tag(rule: str) -> str:
    """``alerts/rule/<rule>``: the cumulative number of alerts ``rule`` raised."""
    return alert_tag(alert_rule_name(rule))


ALERT_COUNT_TAG = alert_tag("count")
ALERT_TOTAL_TAG = alert_tag("total")
ALERT_RULE_PREFIX = alert_tag(ALERT_RULE_NAME)


METRIC_DESCRIPTIONS: dict[str, str] = {
    "alpha": "power-law exponent alpha of the ESD tail, rho(lambda) ~ lambda^-alpha "
    "(Martin & Mahoney 2021; 2-6 well trained, <2 over-trained, >6 under-trained)",
    "xmin": "lower end xmin of the power-law tail of the ESD",
    "D": "Kolmogorov-Smirnov distance between the ESD tail and the fitted power law",
    "alpha_sigma": "standard error of alpha, (alpha - 1) / sqrt(n_tail)",
    "n_tail": "number of eigenvalues in the fitted power-law tail",
    "alpha_hill": "Hill estimate of alpha with xmin = median eigenvalue (TempBalance)",
    "log_norm": "log10 of the squared Frobenius norm, log10(sum lambda)",
    "log_spectral_norm": "log10 of the largest eigenvalue, log10(lambda_max)",
    "alpha_weighted": "alpha-hat = alpha * log10(lambda_max)",
    "log_alpha_norm": "log10(sum lambda^alpha), the alpha-norm",
    "stable_rank": "stable rank sum lambda / lambda_max",
    "entropy": "spectral entropy -sum p ln p / ln(rank), p = lambda / sum lambda",
    "matrix_rank": "numerical rank: number of sigma > sigma_max * N * eps",
    "rank_loss": "M minus the numerical rank (rank collapse)",
    "mp_softrank": "MP soft rank lambda_plus / lambda_max",
    "num_spikes": "eigenvalues above the Marchenko-Pastur edge plus the Tracy-Widom margin",
    "lambda_plus": "Marchenko-Pastur bulk edge lambda_plus = s^2 (1 + 1/sqrt(Q))^2",
    "mp_s2": "Marchenko-Pastur scale s^2 fitted to the bulk",
    "sigma_mp": "WeightWatcher's MP sigma, fitted to the ESD rescaled to mean 1 (ww_compat only)",
    "spectral_norm": "largest singular value sqrt(lambda_max)",
    "frobenius_norm": "Frobenius norm sqrt(sum lambda)",
    "num_traps": "correlation traps: eigenvalues of the entry-shuffled weight above its MP edge",
    "trap_max": "largest eigenvalue of the entry-shuffled weight relative to its MP edge",
    "rand_distance": "Jensen-Shannon distance between the log-ESD histograms of the weight and "
    "of its entry-shuffled copy",
    "rand_distance_ww": "WeightWatcher's rand_distance: sorted eigenvalue vectors of the weight "
    "and of its entry-shuffled copy compared as probability vectors",
    "weight_motion": "relative distance the weight moved since the previous analysis, "
    "||W_t - W_t-1||_F / ||W_t-1||_F",
    "weight_rotation": "angle in radians between the weight now and at the previous analysis, "
    "as vectors (blind to rescaling: 0 when the weight only shrinks or grows)",
    "weight_drift": "relative distance of the weight from the run's first analysis, "
    "||W_t - W_0||_F / ||W_0||_F",
}

ESD_TEXT = ("ESD = the eigenvalues lambda of the layer's correlation matrix, computed from the "
            "singular values sigma of its weight matrix W as the normalization below says")
"""What the ESD of a description is (the scale of lambda is the normalization's)."""

MOTION_TEXT = ("of the weight tensor itself, the same in every conv mode (a conv weight as its "
               "out_channels x (in_channels kh kw) unfolding), estimated from a fixed Gaussian "
               "sketch W Omega of k columns (exact when the weight has at most k columns)")
"""How the ``"motion"`` metrics were made (their tags carry no conv mode or normalisation)."""

_NORMALIZATION_TEXT = {
    "raw": "normalization raw (lambda = sigma^2)",
    "ww": "normalization ww (WeightWatcher 0.7.7: lambda = sigma^2 / 2 for convs)",
    "per_row": "normalization per_row (lambda = sigma^2 / N, N the number of rows of the "
    "analysed matrix; DeepDataProfiler)",
}

_FIT_TEXT = {
    "ks": "fit KS-optimal xmin (Clauset et al.)",
    "hill": "fit Hill estimator with xmin = median eigenvalue",
    None: "no power-law fit",
}

_HYPERGRAPH_DESCRIPTIONS: dict[str, str] = {
    "n_edges": "number of class hyperedges (classes of the probe with an edge)",
    "jaccard_mean": "class overlap: mean pairwise Jaccard |e_a & e_b| / |e_a | e_b| of the class "
    "hyperedges",
    "jaccard_max": "largest pairwise Jaccard of two class hyperedges",
    "class_specific_fraction": "fraction of the neurons in some hyperedge that lie in exactly one "
    "(class-specific neurons)",
    "class_specific_fraction_all": "class-specific neurons / all nodes (the analysed neurons)",
    "degree_mean": "mean number of class hyperedges holding a covered neuron",
    "degree_mean_all": "mean number of class hyperedges holding a neuron, over all nodes",
    "s_components_1": "classes' 1-connected components (edges sharing >= 1 neuron joined)",
    "s_components_2": "classes' 2-connected components (edges sharing >= 2 neurons joined)",
    "s_components_3": "classes' 3-connected components (edges sharing >= 3 neurons joined)",
    "dual_s_components_1": "neurons' 1-connected components in the dual hypergraph",
    "dual_s_components_2": "neurons' 2-connected components in the dual hypergraph",
    "dual_s_components_3": "neurons' 3-connected components in the dual hypergraph",
    "edge_stability_mean": "mean Jaccard of each class hyperedge with its previous analysis's, "
    "carried to the neurons matched by their singular vectors",
    "neuron_match_cosine": "mean |cosine| |<u_i, u'_j>| |<v_i, v'_j>| of the rank-one components "
    "of the previous analysis's neurons and their current matches (Hungarian assignment; 1: the "
    "same singular vectors, possibly reordered)",
}
"""The statistics of one layer's class hypergraph (``classes.hypergraph.hypergraph_stats``) and
the neuron match; nodes are SVD-neurons, edges e_c the class hyperedges (DeepDataProfiler)."""

_MEAN_SHARE = ("; edge_rule='mean_share': nodes the top-k neurons by sigma, e_c the fewest "
               "neurons holding the share tau of class c's mean |signal| (or the top m)")

CLASS_STAT_DESCRIPTIONS: dict[str, str] = {
    **_HYPERGRAPH_DESCRIPTIONS,
    **{f"{stat}_mean_share": text + _MEAN_SHARE for stat, text in _HYPERGRAPH_DESCRIPTIONS.items()},
    "specific_neurons": "per class c: neurons in e_c and in no other hyperedge",
    "specific_retained": "per class c: the class-specific neurons of the previous analysis "
    "(matched by their singular vectors) still specific to c",
    "feature_fraction_mean": "mean over classes of |S_c| / D, Badola et al.'s class-specific "
    "penultimate features",
    "feature_count_mean": "mean over classes of |S_c|, the class-specific penultimate features",
    "feature_count": "per class c: |S_c|, Badola et al.'s class-specific penultimate features",
    "selectivity": "selectivity (D - median m(x)) / D of the penultimate features",
    "feature_jaccard_previous_mean": "mean Jaccard of each S_c with its previous analysis's",
    "functional_acc_full": "probe accuracy of argmax_c z_c, z_c = sum_j W[c, j] h_j + b_c over "
    "all D features (the linear head; Badola et al.'s functional test)",
    "functional_acc_specific": "probe accuracy with class c's logit restricted to S_c: "
    "z_c = sum_{j in S_c} W[c, j] h_j + b_c (Badola et al.'s functional test)",
    "functional_acc_random": "probe accuracy with class c's logit restricted to a random set of "
    "|S_c| features, mean over functional_draws draws (Badola et al.'s functional test)",
    "functional_gain": "functional_acc_specific - functional_acc_random: what S_c carries beyond "
    "as many random features (Badola et al.)",
    "functional_acc_specific_first": "functional_acc_specific of the run's first analysis",
    "functional_gain_first": "functional_gain of the run's first analysis",
    "factorization_rank": "non-negative CP rank of the layer's rectified outputs chosen by "
    "CORCONDIA (Saini & Papalexakis)",
    "factorization_fit": "fit 1 - ||X - Xhat|| / ||X|| of the chosen CP rank",
    "factorization_corcondia": "core consistency (CORCONDIA) of the chosen CP rank",
}
"""What each ``classes/<stat>/<layer>`` scalar is, and the per-class ``<stat>/<c>`` values of
the history file and the class rules (docs/methods.md#class-statistics)."""

_SAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


def metric_name(metric: str, mode: str, primary_mode: str) -> str:
    """``alpha`` for the primary mode, ``alpha.operator`` for another one."""
    return metric if mode == primary_mode else f"{metric}.{mode}"


def layer_tag(metric: str, layer: str, mode: str, primary_mode: str) -> str:
    """``spectral/<metric>/<layer>`` (primary mode) or ``spectral/<metric>.<mode>/<layer>``."""
    return Scalar(Family.LAYER, metric, 0.0, "", layer=layer, mode=mode,
                  primary=mode == primary_mode).tag


def summary_tag(key: str, mode: str, primary_mode: str) -> str:
    """``all_layers/<key>`` (primary mode) or ``all_layers/<key>.<mode>``."""
    return Scalar(Family.SUMMARY, key, 0.0, "", mode=mode, primary=mode == primary_mode).tag


def parse_tag(tag: str) -> tuple[str, str, str | None] | None:
    """The inverse of :func:`layer_tag` and :func:`summary_tag`, for runs read back from their
    event files: ``spectral/alpha.operator/conv1`` -> ("conv1", "alpha", "operator");
    ``all_layers/alpha_mean`` and the older ``spectral_summary/alpha_mean`` ->
    (:data:`SUMMARY_LAYER`, "alpha_mean", None); other tags -> None. A missing ``.mode``
    suffix means the run's primary mode."""
    head, _, rest = tag.partition("/")
    if head == Family.LAYER.value:
        metric, _, layer = rest.partition("/")
        if not layer:
            return None
    elif head in (Family.SUMMARY.value, LEGACY_SUMMARY):
        metric, layer = rest, SUMMARY_LAYER
    else:
        return None
    metric, _, mode = metric.partition(".")
    return layer, metric, mode or None


def spectrum_tag(mode: str, layer: str) -> str:
    """``spectra/<mode>/<layer>``: histogram of the layer's singular values."""
    return f"{SPECTRA_PREFIX}{mode}/{clean_layer_name(layer)}"


def figure_tag(figure: str, mode: str, layer: str | None = None) -> str:
    """``spectral_figures/<figure>/<mode>[/<layer>]`` (``esd`` per layer, ``heatmap`` per mode)."""
    tag = f"spectral_figures/{figure}/{mode}"
    return tag if layer is None else f"{tag}/{clean_layer_name(layer)}"


def class_tag(stat: str, layer: str) -> str:
    """``classes/<stat>/<layer>``: a class-level statistic of one layer."""
    return Scalar(Family.CLASSES, stat, 0.0, "", layer=layer).tag


def class_figure_tag(figure: str, layer: str) -> str:
    """``class_figures/<figure>/<layer>`` (``hypergraph``, ``overlap``)."""
    return f"class_figures/{figure}/{clean_layer_name(layer)}"


def class_description(stat: str, how: str) -> str:
    """What a class statistic is, and ``how`` it was made (probe, top-k, hyperedge rule)."""
    return f"{CLASS_STAT_DESCRIPTIONS.get(stat, stat)}; {how}"


def clean_layer_name(layer: str) -> str:
    """A qualified module name made safe for a tag (characters outside ``[A-Za-z0-9_.-/]`` become
    ``_``); ordinary ``named_modules`` names pass unchanged."""
    return _SAFE.sub("_", layer)


def _mode_text(mode: str) -> str:
    """What ``mode`` computes (:attr:`svd_callback.spectra.modes.ModeSpec.text`)."""
    return MODES[mode].text if mode in MODES else f"conv mode {mode}"


def conventions(mode: str, normalization: str, fit: str | None, ww_compat: bool = False) -> str:
    """``conv mode ...; normalization ...; fit ...`` for one mode."""
    fit_text = _FIT_TEXT.get(fit, f"fit {fit}")
    if ww_compat and fit is not None:
        fit_text += " (WeightWatcher 0.7.7 compatible)"
    return "; ".join(
        (
            _mode_text(mode),
            _NORMALIZATION_TEXT.get(normalization, f"normalization {normalization}"),
            fit_text,
        )
    )


def short_conventions(mode: str, normalization: str, fit: str | None) -> str:
    """``mode unfold, normalization raw, fit ks`` (figure subtitles)."""
    return f"mode {mode}, normalization {normalization}, fit {fit or 'none'}"


MP_FIT_TEXT = {
    False: "MP bulk: quantile fit with spike trimming, margin 4 Tracy-Widom units",
    True: "MP bulk: WeightWatcher 0.7.7 mp_fit (KDE fit of the ESD rescaled to mean 1, "
    "margin sqrt(TW))",
}
"""Which Marchenko-Pastur fit produced the ``mp`` group's values (keyed by ww_compat)."""


def metric_description(
    metric: str, mode: str, normalization: str, fit: str | None, ww_compat: bool = False
) -> str:
    """What a per-layer scalar is and how it was made (shown in TensorBoard's chart tooltip)."""
    what = METRIC_DESCRIPTIONS.get(metric, metric)
    if metric in METRIC_GROUPS["motion"]:
        return f"{what}; {MOTION_TEXT}"
    how = conventions(mode, normalization, fit, ww_compat)
    if metric in METRIC_GROUPS["mp"]:
        how += "; " + MP_FIT_TEXT[bool(ww_compat)]
    return f"{what}; {ESD_TEXT}; {how}"


def summary_description(
    key: str, mode: str, normalization: str, fit: str | None, ww_compat: bool = False
) -> str:
    """Description of a model-level aggregate such as ``alpha_mean`` or ``n_skipped``."""
    how = conventions(mode, normalization, fit, ww_compat)
    found = aggregate(key)
    if found is None:
        return f"{key}; {how}"
    if found.kind == "statistic":
        what = METRIC_DESCRIPTIONS.get(found.metric, found.metric)
        if found.metric in METRIC_GROUPS["motion"]:
            how = MOTION_TEXT
        return f"{found.stat} over analysed layers (finite values) of: {what}; {how}"
    if found.kind == "fraction":
        return (f"fraction of fitted layers labelled {found.label} by the alpha thresholds; "
                f"{how}")
    return f"{found.text}; {how}"


def spectrum_description(mode: str, normalization: str) -> str:
    """The description of the ``spectra/<mode>/<layer>`` histogram: log10 sigma."""
    what = ("log10 of the layer's singular values sigma (before normalisation; zero singular "
            "values left out), so that the bulk and the heavy tail both show")
    how = MODES[mode].text if mode in MODES else mode
    return (
        f"{what}; {how}; the ESD metrics use {_NORMALIZATION_TEXT[normalization]}"
        if normalization in _NORMALIZATION_TEXT
        else f"{what}; {how}"
    )


def metrics_for_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """All metric names of the selected groups, in group order."""
    names: list[str] = []
    for group in groups:
        names.extend(METRIC_GROUPS[group])
    return tuple(dict.fromkeys(names))


def custom_scalar_regex(metric: str, mode: str, primary_mode: str) -> str:
    """Regex matching ``metric`` for every layer in ``mode`` (TensorBoard custom scalars)."""
    return "^" + re.escape(f"spectral/{metric_name(metric, mode, primary_mode)}/") + ".*"
