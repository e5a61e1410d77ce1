"""Experiments of kind `interleaving`: validation (file, line, key), assignment, layers, QA, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiment_router import ConfigError, InMemoryStickyBucketStore, Router
from experiment_router.cli import main
from tests.experiment_router.helpers import EXAMPLES, base_config, experiment
from tests.experiment_router.test_loader import HEADER as LOADER_HEADER

EXAMPLE = EXAMPLES / "interleaving.yaml"
USERS = [f"user-{i}" for i in range(20_000)]

HEADER = (
    LOADER_HEADER
    + """\
  - key: il
    kind: interleaving
    stage: ranking
    status: running
"""
)
ARMS = """\
    variations:
      - {key: control, payload: {model_name: mmoe, model_version: 1}}
      - {key: treatment, payload: {model_name: mmoe+dml, model_version: 1}}
"""


def interleaving(key: str = "il", **fields: object) -> dict:
    exp = experiment(key, kind="interleaving", **fields)
    exp["variations"][1]["payload"]["task_weights"] = {"click": 0.5}
    return exp


def router_with(*experiments: dict) -> Router:
    data = base_config()
    data["experiments"] = list(experiments)
    return Router.from_dict(data)


def test_users_inside_get_both_arms_merged_and_are_logged() -> None:
    router = router_with(interleaving())
    [a] = router.assign("user-1")
    assert (a.variant_key, a.variation_id, a.in_experiment, a.should_log) == ("interleaved", 0, True, True)
    assert a.interleaving is not None and a.interleaving.method == "team_draft"
    control, treatment = a.interleaving.arms
    assert (control.key, control.payload.model_version) == ("control", "1")
    assert (treatment.key, treatment.payload.model_version) == ("treatment", "2")
    assert dict(control.payload.task_weights) == {"click": 1.0, "rating": 0.1}  # the default's, as for A/B
    assert dict(treatment.payload.task_weights) == {"click": 0.5}
    assert router.payloads([a])["ranking"] == control.payload  # the stage's payload is the first arm
    assert {("ranking", "mmoe", "1"), ("ranking", "mmoe", "2")} <= router.model_refs()


def test_coverage_sizes_the_experiment_and_assign_many_agrees() -> None:
    router = router_with(interleaving(coverage=0.3))
    bulk = router.assign_many(USERS)["il"]
    assert set(np.unique(bulk)) == {-1, 0}
    assert abs((bulk == 0).mean() - 0.3) < 0.015
    single = np.array(
        [router.assign(u)[0].variation_id if router.assign(u)[0].in_experiment else -1 for u in USERS[:2000]]
    )
    np.testing.assert_array_equal(single, bulk[:2000])
    outside = next(a for u in USERS if not (a := router.assign(u)[0]).in_experiment)
    assert outside.interleaving is None and outside.reason == "outside coverage"


def test_an_interleaving_and_an_ab_experiment_in_one_layer_never_share_a_user() -> None:
    router = router_with(
        interleaving(layer={"name": "ranking", "range": [0.0, 0.4]}),
        experiment("ab", layer={"name": "ranking", "range": [0.4, 1.0]}),
    )
    bulk = router.assign_many(USERS)
    both = (bulk["il"] >= 0) & (bulk["ab"] >= 0)
    assert not both.any()
    assert abs((bulk["il"] >= 0).mean() - 0.4) < 0.015 and abs((bulk["ab"] >= 0).mean() - 0.6) < 0.015


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((("ranking", [0.0, 0.6]), ("ranking", [0.5, 1.0])), "overlaps experiment"),
        ((("ranking", [0.0, 0.5]), ("other", [0.5, 1.0])), "must share one layer"),
    ],
)
def test_the_existing_layer_rules_keep_interleaving_and_ab_exclusive(layers: tuple, message: str) -> None:
    (il_layer, il_range), (ab_layer, ab_range) = layers
    data = base_config()
    data["experiments"] = [
        interleaving(layer={"name": il_layer, "range": il_range}),
        experiment("ab", layer={"name": ab_layer, "range": ab_range}),
    ]
    with pytest.raises(ConfigError) as info:
        Router.from_dict(data)
    assert message in info.value.describe()


def test_qa_users_are_forced_into_the_merged_list_or_one_arm_and_never_logged() -> None:
    router = router_with(interleaving(coverage=0.0, forced={"interleaved": ["qa-1"], "treatment": ["qa-2"]}))
    [merged] = router.assign("qa-1")
    [alone] = router.assign("qa-2")
    assert merged.interleaving is not None and merged.in_experiment and not merged.should_log
    assert alone.interleaving is None and alone.variant_key == "treatment" and not alone.should_log
    assert alone.payload.model_version == "2"
    assert not router.assign("user-1")[0].in_experiment  # coverage 0: nobody else


def test_a_sticky_store_does_not_apply_to_interleaving() -> None:
    store = InMemoryStickyBucketStore()
    data = base_config()
    data["experiments"] = [interleaving(coverage=0.5)]
    sticky = Router.from_dict(data, sticky_store=store)
    plain = Router.from_dict(data)
    for user in USERS[:300]:
        assert sticky.assign(user) == plain.assign(user)
    assert all(store.get("user_id", u) is None for u in USERS[:300])  # nothing was made sticky


def _error(tmp_path: Path, body: str) -> ConfigError:
    path = tmp_path / "exp.yaml"
    path.write_text(HEADER + body)
    with pytest.raises(ConfigError) as info:
        Router.from_file(path)
    text = info.value.describe()
    assert text.startswith(f"{path}:") and "experiment 'il'" in text, text
    return info.value


@pytest.mark.parametrize(
    ("body", "field", "line", "message"),
    [
        ("    method: balanced\n" + ARMS, "experiments[0].method", 10, "'balanced' is not implemented"),
        ("    method: interleave\n" + ARMS, "experiments[0].method", 10, "'team_draft' or 'balanced'"),
        ("    sticky: true\n" + ARMS, "experiments[0].sticky", 10, "does not apply to interleaving"),
        ("    bucket_version: 2\n" + ARMS, "experiments[0].bucket_version", 10, "does not apply"),
        ("    methd: team_draft\n" + ARMS, "experiments[0].methd", 10, "allowed: ["),
        (
            ARMS + "      - {key: third, payload: {model_name: mmoe, model_version: 1}}\n",
            "experiments[0].variations",
            10,
            "exactly two arms",
        ),
        (
            ARMS.replace("{key: control,", "{key: control, weight: 0.5,").replace(
                "{key: treatment,", "{key: treatment, weight: 0.5,"
            ),
            "experiments[0].variations[0].weight",
            11,
            "take no weight",
        ),
        (
            ARMS.replace("{key: control,", "{key: control, range: [0, 0.5],").replace(
                "{key: treatment,", "{key: treatment, range: [0.5, 1],"
            ),
            "experiments[0].variations[0].range",
            11,
            "take no range",
        ),
        (
            ARMS.replace("key: treatment", "key: interleaved"),
            "experiments[0].variations[1].key",
            12,
            "reserved",
        ),
        (
            "    forced: {both: [qa-1]}\n" + ARMS,
            "experiments[0].forced.both",
            10,
            "['control', 'treatment', 'interleaved']",
        ),
    ],
)
def test_bad_interleaving_configs_name_file_line_and_key(
    tmp_path: Path, body: str, field: str, line: int, message: str
) -> None:
    err = _error(tmp_path, body)
    assert (err.field, err.line) == (field, line)
    assert message in err.describe()


def test_interleaving_needs_the_ranking_stage(tmp_path: Path) -> None:
    path = tmp_path / "retrieval.yaml"
    path.write_text((HEADER + ARMS).replace("stage: ranking", "stage: retrieval"))
    with pytest.raises(ConfigError) as info:
        Router.from_file(path)
    assert info.value.field == "experiments[0].stage" and info.value.line == 8
    assert "stage must be 'ranking'" in info.value.message


def test_method_is_an_error_on_ab_experiments(tmp_path: Path) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text((HEADER + "    method: team_draft\n" + ARMS).replace("    kind: interleaving\n", ""))
    with pytest.raises(ConfigError) as info:
        Router.from_file(path)
    assert info.value.field == "experiments[0].method" and info.value.line == 9
    assert "only to experiments of kind 'interleaving'" in info.value.message


def test_cli_shows_both_arms_and_previews_the_interleaved_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    assert main(["assign", "--config", str(EXAMPLE), "--user", "qa-alice"]) == 0
    out = capsys.readouterr().out
    assert "variant=interleaved" in out and "-> mmoe v1 + mmoe+dml v1" in out and "no exposure" in out
    assert main(["preview", "--config", str(EXAMPLE), "--users", "20000"]) == 0
    out = capsys.readouterr().out
    section = out.split("ranking-interleave-dml [ranking, running]:")[1].split("ranking-mmoe-dml")[0]
    assert "interleaved" in section and "SRM" not in section
    inside = int(section.split("interleaved")[1].split()[0])
    assert abs(inside / 20_000 - 0.2) < 0.015  # the experiment's slice of the layer


def test_cli_stage_summary_names_both_arms_of_an_interleaved_user(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-stage summary said "ranking: mmoe v1", the first arm's payload alone, for a user who sees both
    arms merged; a QA user forced into one arm sees that arm alone."""
    weights = "task_weights={'click': 1.0, 'rating': 0.1}"
    assert main(["assign", "--config", str(EXAMPLE), "--user", "qa-alice"]) == 0
    ranking = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ranking:")]
    assert ranking == [f"ranking: mmoe v1 {weights} + mmoe+dml v1 {weights}, interleaved by team_draft"]
    assert main(["assign", "--config", str(EXAMPLE), "--user", "qa-bob"]) == 0
    ranking = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ranking:")]
    assert ranking == [f"ranking: mmoe+dml v1 {weights}"]
