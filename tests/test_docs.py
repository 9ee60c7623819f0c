"""The notes in docs/ name every metric, statistic, rule, mode and state key the code has, and
the repository cites no notes outside itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from svd_callback.aggregates import SUMMARY_METRICS
from svd_callback.alerts import default_class_rules, default_rules
from svd_callback.report import CONV_MODES, NORMALIZATIONS
from svd_callback.sinks.tags import CLASS_STAT_DESCRIPTIONS, METRIC_GROUPS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _named(text: str) -> set[str]:
    """Every name written in backticks (``stat/<c>`` also names ``stat``)."""
    names = set(re.findall(r"`([^`\s]+)`", text))
    return names | {n.removesuffix("/<c>") for n in names}


def test_methods_define_every_metric_statistic_and_rule():
    named = _named(_text("methods.md"))
    metrics = {m for group in METRIC_GROUPS.values() for m in group}
    rules = {rule.name for rule in default_rules() + default_class_rules()} | {
        "ClassOverlapRising"}
    # the mean_share statistics are named by their suffix (`_mean_share`) and base statistic
    stats = {s.removesuffix("_mean_share") if "_mean_share" in named else s
             for s in CLASS_STAT_DESCRIPTIONS}
    missing = (metrics | set(SUMMARY_METRICS) | stats | rules) - named
    assert not missing, f"docs/methods.md does not name {sorted(missing)}"


def test_conventions_name_every_group_mode_normalisation_and_state_key():
    from svd_callback import SpectralMonitor

    named = _named(_text("conventions.md"))
    state = SpectralMonitor().state_dict()
    wanted = set(METRIC_GROUPS) | set(CONV_MODES) | set(NORMALIZATIONS) | set(state)
    missing = wanted - named
    assert not missing, f"docs/conventions.md does not name {sorted(missing)}"


@pytest.mark.parametrize("name", ["architecture.md", "methods.md", "conventions.md"])
def test_relative_links_between_the_notes_resolve(name):
    for target in re.findall(r"\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)", _text(name)):
        if target == "mp_metrics.md":
            continue  # written beside the MP fit that it documents
        assert (DOCS / target).is_file(), f"{name} links to missing {target}"


def test_the_repository_cites_only_its_own_notes():
    outside = re.compile(r"\b(?:DESIGN|RESEARCH)\.md\b")
    files = [p for p in REPO.rglob("*") if p.suffix in {".py", ".md", ".yaml", ".toml"}
             and not any(part.startswith(".") for part in p.relative_to(REPO).parts)]
    cited = [str(p.relative_to(REPO)) for p in files
             if p != Path(__file__).resolve() and outside.search(p.read_text(encoding="utf-8"))]
    assert not cited, f"notes outside the repository cited in {cited}"
