"""Metric config validation (file, line, key in errors) and aggregation from per-user rows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from analytics.analysis_window import AnalysisWindow
from analytics.metrics import (
    AnalysisConfig,
    MetricConfigError,
    MetricDefinition,
    StoreContractError,
    aggregate,
    aggregate_ratio_rows,
    aggregate_rows,
    load_analysis_config,
)
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean
from analytics.store import MemoryEventStore
from tests.analytics.stats.simulated_events import simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"
README = Path(__file__).parents[2] / "README.md"
RNG = np.random.default_rng(3)
N = 300
VARIANTS = np.where(RNG.random(N) < 0.5, "control", "treatment")
VALUES = RNG.exponential(5.0, N)
COUNTS = RNG.poisson(1.0, N)
PRE = RNG.exponential(5.0, N)
ROWS = [
    (str(v), float(x), int(c), float(p)) for v, x, c, p in zip(VARIANTS, VALUES, COUNTS, PRE, strict=True)
]


def metric(**fields) -> MetricDefinition:
    return MetricDefinition.model_validate({"name": "m", **fields})


def test_example_config_loads() -> None:
    config = load_analysis_config(EXAMPLE)
    assert [m.type for m in config.metrics] == ["binomial", "ratio", "continuous", "count"]
    assert config.experiment("ranking-dml").weights == {"control": 0.5, "dml": 0.5}
    assert config.experiment("other").control is None


def test_the_documented_analysis_windows_load(tmp_path: Path) -> None:
    """The example's commented-out restarted experiment, uncommented, and the README's inline window give the
    window they describe (2024-05-13T09:30:00Z .. 2024-05-27T00:00:00Z)."""
    example = EXAMPLE.read_text()
    commented = re.search(r"^  # (ranking-dml-restarted:\n(?:  #   .*\n)+)", example, re.M)
    assert commented is not None
    uncommented = tmp_path / "uncommented.yaml"
    uncommented.write_text(example + "  " + commented.group(1).replace("  #   ", "    "))
    inline = re.search(r"`(experiments: \{<key>: \{start: [^`]+\}\})`", README.read_text())
    assert inline is not None
    readme = tmp_path / "readme.yaml"
    readme.write_text(example.partition("\nexperiments:")[0] + "\n" + inline.group(1).replace("<key>", "k"))
    expected = AnalysisWindow(1_715_592_600_000, 1_716_768_000_000)
    assert load_analysis_config(uncommented).experiment("ranking-dml-restarted").window == expected
    assert load_analysis_config(readme).experiment("k").window == expected


def test_unknown_key_names_file_line_key_and_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "alpha: 0.05\nmetrics:\n  - name: ctr\n    type: binomial\n    event: click\n    guardrial: true\n"
    )
    with pytest.raises(MetricConfigError) as info:
        load_analysis_config(path)
    message = str(info.value)
    assert f"{path}:6: metrics.0.guardrial: unknown key" in message
    assert "'guardrail'" in message and "'winsorize'" in message


def test_type_specific_rules_name_the_metric(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "metrics:\n  - name: a\n    type: count\n    event: x\n  - name: r\n    type: ratio\n    numerator: c\n"
    )
    with pytest.raises(
        MetricConfigError, match=r"metrics.yaml:5: metrics.1: Value error, ratio metrics need numerator"
    ):
        load_analysis_config(path)


def test_bad_yaml_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text("metrics: [\n")
    with pytest.raises(MetricConfigError, match="cannot read analysis config"):
        load_analysis_config(path)
    path.write_text("alpha: 2\nmetrics:\n  - {name: a, type: binomial, event: x}\n")
    with pytest.raises(MetricConfigError, match=r":1: alpha: Input should be less than 1"):
        load_analysis_config(path)
    path.write_text("correction: bonferroni\nmetrics:\n  - {name: a, type: binomial, event: x}\n")
    with pytest.raises(
        MetricConfigError, match=r"metrics.yaml:1: correction: Input should be 'holm', 'bh' or"
    ):
        load_analysis_config(path)


def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text("metrics:\n  - name: a\n\ttype: mean\n")  # a tab: YAML's message spanned four lines
    with pytest.raises(MetricConfigError) as raised:
        load_analysis_config(path)
    assert str(raised.value) == (
        f"{path}:3:1: cannot read analysis config: invalid YAML: while scanning for the next token found "
        "character '\\t' that cannot start any token"
    )


def test_an_empty_outcome_name_is_refused(tmp_path: Path) -> None:
    """No outcome has an empty name (events need one): such a metric read nothing and reported zeros."""
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "metrics:\n  - {name: a, type: mean, event: x}\n  - {name: r, type: ratio, numerator: x,\n"
        '     denominator: ""}\n'
    )
    with pytest.raises(MetricConfigError, match=r"metrics.yaml:4: metrics.1.denominator: String should have"):
        load_analysis_config(path)


def test_cross_references_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown metric 'b'"):
        AnalysisConfig.model_validate(
            {
                "metrics": [{"name": "a", "type": "count", "event": "x"}],
                "experiments": {"e": {"metrics": ["b"]}},
            }
        )
    with pytest.raises(ValueError, match="duplicate metric name 'a'"):
        AnalysisConfig.model_validate({"metrics": [{"name": "a", "type": "count", "event": "x"}] * 2})


def test_cross_reference_errors_name_the_line_and_key_at_fault(tmp_path: Path) -> None:
    """They used to point at line 1, key <root>."""
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "metrics:\n  - {name: a, type: count, event: x}\n  - {name: b, type: count, event: y}\n"
        "  - {name: a, type: mean, event: z}\n"
    )
    with pytest.raises(MetricConfigError, match=r"\.yaml:4: metrics\.2\.name: .*duplicate metric name 'a'"):
        load_analysis_config(path)
    path.write_text(
        "metrics:\n  - {name: a, type: count, event: x}\nexperiments:\n  e:\n    metrics: [a, c]\n"
    )
    with pytest.raises(MetricConfigError, match=r":5: experiments\.e\.metrics\.1: .*unknown metric 'c'"):
        load_analysis_config(path)


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        # inf made the sequential interval divide by zero (a traceback in report, a 500 on the dashboard)
        ("sequential_tuning_parameter: .inf\nsequential: true\n", ":1: sequential_tuning_parameter: "),
        # a NaN or inf weight silently switched the SRM check off
        ("experiments:\n  e: {weights: {control: .nan, b: 1}}\n", ":2: experiments.e.weights.control: "),
        ("experiments:\n  e: {weights: {control: .inf, b: 1}}\n", ":2: experiments.e.weights.control: "),
    ],
)
def test_non_finite_numbers_are_config_errors(tmp_path: Path, yaml_text: str, where: str) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(yaml_text + "metrics:\n  - {name: a, type: mean, event: x}\n")
    with pytest.raises(MetricConfigError, match=f"metrics.yaml{where}Input should be a finite number"):
        load_analysis_config(path)


@pytest.mark.parametrize(
    ("winsorize", "message"),
    [
        ("{lower_quantile: 0.9, upper_quantile: 0.1}", "winsorize.lower_quantile: .*is above upper"),
        ("{lower_value: 10, upper_value: 1}", "winsorize.lower_value: .*is above upper"),
        ("{upper_value: .nan}", "winsorize.upper_value: Input should be a finite number"),
    ],
)
def test_winsorization_caps_must_make_sense(tmp_path: Path, winsorize: str, message: str) -> None:
    """Crossed caps used to clip every user to the upper cap: zero variance, a report with no result."""
    path = tmp_path / "metrics.yaml"
    path.write_text(f"metrics:\n  - name: a\n    type: mean\n    event: x\n    winsorize: {winsorize}\n")
    with pytest.raises(MetricConfigError, match=f"metrics.yaml:5: metrics.0.{message}"):
        load_analysis_config(path)


def test_control_must_be_a_weighted_variant(tmp_path: Path) -> None:
    """A control missing from weights got weight 0: SRM flagged p = 0 and every lift was against it."""
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "metrics:\n  - {name: a, type: mean, event: x}\n"
        "experiments:\n  e:\n    control: ctrl\n    weights: {control: 1, treatment: 1}\n"
    )
    with pytest.raises(MetricConfigError, match=r"\.yaml:5: experiments\.e\.control: .*'ctrl' is not one"):
        load_analysis_config(path)


def test_a_key_given_twice_is_a_config_error(tmp_path: Path) -> None:
    """YAML kept the last value silently: the first ``cuped: true`` below was ignored."""
    path = tmp_path / "metrics.yaml"
    path.write_text("metrics:\n  - name: a\n    type: mean\n    event: x\n    cuped: true\n    cuped: no\n")
    with pytest.raises(MetricConfigError, match=r":6: metrics\.0\.cuped: duplicate key \(also line 5\)"):
        load_analysis_config(path)
    nested_aliases = "".join(f"k{i}: &k{i} [{', '.join([f'*k{i - 1}'] * 9)}]\n" for i in range(1, 9))
    path.write_text("k0: &k0 [x]\n" + nested_aliases)  # walked once per node, not 9 ** 8 times
    with pytest.raises(MetricConfigError, match="k8: unknown key"):
        load_analysis_config(path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_bytes(b"\xff\xfemetrics: []\n")  # e.g. saved as UTF-16; used to raise UnicodeDecodeError
    with pytest.raises(MetricConfigError, match="cannot read analysis config"):
        load_analysis_config(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "ratio", "numerator": "c", "denominator": "i", "cuped": True}, "cuped is not supported"),
        ({"type": "binomial", "event": "c", "winsorize": {"upper_value": 1}}, "does not apply to binomial"),
        ({"type": "mean", "event": "c", "winsorize": {}}, "at least one"),
        ({"type": "mean", "event": "c", "winsorize": {"upper_value": 1, "upper_quantile": 0.9}}, "not both"),
        ({"type": "count"}, "need event"),
    ],
)
def test_metric_rules(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        metric(**fields)


def _expected(mask_values: np.ndarray) -> dict[str, tuple[int, float, float]]:
    return {
        v: (
            int((VARIANTS == v).sum()),
            float(mask_values[VARIANTS == v].mean()),
            float(np.var(mask_values[VARIANTS == v], ddof=1)),
        )
        for v in ("control", "treatment")
    }


@pytest.mark.parametrize(
    ("fields", "values", "kind"),
    [
        ({"type": "binomial", "event": "e"}, (COUNTS > 0).astype(float), Proportion),
        ({"type": "count", "event": "e"}, COUNTS.astype(float), SampleMean),
        ({"type": "mean", "event": "e"}, VALUES, SampleMean),
        ({"type": "mean", "event": "e", "aggregation": "count"}, COUNTS.astype(float), SampleMean),
        (
            {"type": "continuous", "event": "e", "winsorize": {"upper_quantile": 0.9}},
            np.minimum(VALUES, np.quantile(VALUES, 0.9)),
            SampleMean,
        ),
        (
            {"type": "continuous", "event": "e", "winsorize": {"lower_value": 1.0, "upper_value": 8.0}},
            np.clip(VALUES, 1.0, 8.0),
            SampleMean,
        ),
    ],
    ids=["binomial", "count", "mean", "mean-of-counts", "winsorised-quantile", "winsorised-values"],
)
def test_aggregate_rows_matches_numpy(fields, values, kind) -> None:
    stats = aggregate_rows(metric(**fields), ROWS)
    for variant, (n, mean, variance) in _expected(values).items():
        stat = stats[variant]
        assert isinstance(stat, kind)
        assert stat.n == n
        assert stat.mean == pytest.approx(mean, rel=1e-12)
        if kind is SampleMean:
            assert stat.variance == pytest.approx(variance, rel=1e-10)


def test_aggregate_cuped_rows() -> None:
    stats = aggregate_rows(metric(type="mean", event="e", cuped=True), ROWS)
    control = VARIANTS == "control"
    stat = stats["control"]
    assert isinstance(stat, CupedMean)
    assert stat.post.sum == pytest.approx(VALUES[control].sum())
    assert stat.pre.sum_squares == pytest.approx((PRE[control] ** 2).sum())
    assert stat.post_pre_sum_product == pytest.approx((VALUES[control] * PRE[control]).sum())


def test_aggregate_ratio_rows_and_order_check() -> None:
    ratio = metric(type="ratio", numerator="c", denominator="i", aggregation="count")
    den_rows = [(v, 0.0, c + 1, 0.0) for v, _, c, _ in ROWS]
    stats = aggregate_ratio_rows(ratio, ROWS, den_rows)
    control = VARIANTS == "control"
    stat = stats["control"]
    assert isinstance(stat, Ratio)
    assert stat.mean == pytest.approx(COUNTS[control].sum() / (COUNTS[control] + 1).sum())
    assert stat.num_den_sum_product == pytest.approx((COUNTS[control] * (COUNTS[control] + 1)).sum())
    with pytest.raises(StoreContractError, match="same user order"):
        aggregate_ratio_rows(ratio, ROWS, den_rows[::-1])
    with pytest.raises(ValueError, match="two row streams"):
        aggregate_rows(ratio, ROWS)


def test_aggregate_from_the_real_memory_store() -> None:
    store = MemoryEventStore()
    simulate_experiment(store, "exp", users=400, seed=5)
    clicks = aggregate(metric(type="count", event="click"), store, "exp")
    rows = list(store.user_metric_values("exp", "click"))
    assert sum(s.n for s in clicks.values()) == 400 == len(rows)
    assert sum(s.sum for s in clicks.values()) == sum(r[2] for r in rows)
    ctr = aggregate(
        metric(type="ratio", numerator="click", denominator="impression", aggregation="count"), store, "exp"
    )
    assert set(ctr) == {"control", "treatment"}
    assert 0.05 < ctr["control"].mean < 0.15
    assert aggregate_rows(metric(type="count", event="e"), []) == {}
