"""Config validation: every invalid case names file, experiment key, field and line; nothing half-loads."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from experiment_router import ConfigError, Router
from experiment_router.errors import ConfigErrors
from experiment_router.loader import _line_map, load_config, repository_checker, repository_tasks
from tests.experiment_router.helpers import EXAMPLES, base_config

HEADER = """\
version: 1
defaults:
  retrieval: {model_name: ssmtl-retrieval-only, model_version: "1"}
  ranking: {model_name: mmoe, model_version: "1", task_weights: {click: 1.0}}
experiments:
"""

GOOD_EXPERIMENT = """\
  - key: exp-a
    stage: ranking
    status: running
    layer: {name: ranking, range: [0.0, 0.5]}
    variations:
      - {key: control, weight: 0.5, payload: {model_name: mmoe, model_version: 1}}
      - {key: treatment, weight: 0.5, payload: {model_name: mmoe+dml, model_version: 1}}
"""


def _write(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body) if not body.startswith("version") else body)
    return path


def _error(path: Path, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Router.from_file(path, **kwargs)
    return info.value


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    router = Router.from_file(example)
    assert router.experiment_keys


def test_negative_weight_names_file_key_field_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        GOOD_EXPERIMENT.replace(
            "weight: 0.5, payload: {model_name: mmoe,", "weight: -0.5, payload: {model_name: mmoe,"
        ),
    )
    err = _error(path)
    text = err.describe()
    assert str(path) in text and "exp-a" in text
    assert "experiments[0].variations[0].weight" in text
    assert f"{path}:11:" in text  # the line of the first variation
    assert "greater than or equal to 0" in text


def test_coverage_outside_unit_interval(tmp_path: Path) -> None:
    path = _write(
        tmp_path, GOOD_EXPERIMENT.replace("    status: running\n", "    status: running\n    coverage: 1.5\n")
    )
    err = _error(path)
    assert err.field == "experiments[0].coverage" and err.experiment == "exp-a" and err.line == 9


def test_weights_must_sum_to_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        GOOD_EXPERIMENT.replace(
            "weight: 0.5, payload: {model_name: mmoe+dml", "weight: 0.7, payload: {model_name: mmoe+dml"
        ),
    )
    assert "sum to 1" in _error(path).describe()


def test_overlapping_layer_ranges(tmp_path: Path) -> None:
    second = GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("[0.0, 0.5]", "[0.4, 1.0]")
    err = _error(_write(tmp_path, GOOD_EXPERIMENT + second))
    assert err.experiment == "exp-b" and err.field == "experiments[1].layer.range"
    assert "overlaps experiment 'exp-a'" in err.message and err.line == 16


def test_adjacent_layer_ranges_are_fine(tmp_path: Path) -> None:
    second = GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("[0.0, 0.5]", "[0.5, 1.0]")
    assert len(Router.from_file(_write(tmp_path, GOOD_EXPERIMENT + second)).experiment_keys) == 2


def test_same_stage_in_two_layers_is_rejected(tmp_path: Path) -> None:
    second = GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("name: ranking,", "name: other,")
    err = _error(_write(tmp_path, GOOD_EXPERIMENT + second))
    assert "must share one layer" in err.message
    assert (
        "this experiment is in layer 'other' and 'exp-a' (experiments[0], line 6) in layer 'ranking'"
        in err.message
    )
    assert "move it into layer 'ranking' with a range disjoint from the others there" in err.message


NO_LAYER = GOOD_EXPERIMENT.replace("    layer: {name: ranking, range: [0.0, 0.5]}\n", "")


def test_two_stage_experiments_without_layer_are_told_to_share_one(tmp_path: Path) -> None:
    path = _write(tmp_path, NO_LAYER + NO_LAYER.replace("exp-a", "exp-b"))
    err = _error(path)
    assert (err.experiment, err.field, err.line) == ("exp-b", "experiments[1].layer", 12)
    assert f"{path}:12: experiment 'exp-b': field 'experiments[1].layer'" in err.describe()
    assert "neither this experiment nor 'exp-a' (experiments[0], line 6) has a layer" in err.message
    assert "put both in one layer with disjoint ranges" in err.message
    assert "no layer" not in err.message
    fixed = GOOD_EXPERIMENT + GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("[0.0, 0.5]", "[0.5, 1]")
    assert len(Router.from_file(_write(tmp_path, fixed)).experiment_keys) == 2  # the advice works


def test_stage_experiment_outside_the_layer_of_another_is_told_which_layer(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, GOOD_EXPERIMENT + NO_LAYER.replace("exp-a", "exp-b")))
    assert err.experiment == "exp-b" and err.line == 13
    assert "'exp-a' (experiments[0], line 6) is in layer 'ranking' and this experiment in none" in err.message
    assert "add `layer: {name: ranking, range: [start, end]}` here" in err.message
    err = _error(_write(tmp_path, NO_LAYER + GOOD_EXPERIMENT.replace("exp-a", "exp-b")))
    assert "this experiment is in layer 'ranking' and 'exp-a' (experiments[0], line 6) in none" in err.message
    assert err.field == "experiments[1].layer" and err.line == 15


def test_duplicate_experiment_keys(tmp_path: Path) -> None:
    second = GOOD_EXPERIMENT.replace("[0.0, 0.5]", "[0.5, 1.0]")
    err = _error(_write(tmp_path, GOOD_EXPERIMENT + second))
    assert "duplicate experiment key 'exp-a'" in err.message and err.line == 13


def test_duplicate_yaml_mapping_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path, GOOD_EXPERIMENT.replace("    status: running\n", "    status: running\n    status: draft\n")
    )
    err = _error(path)
    assert "duplicate key 'status'" in err.message and err.line == 9


def test_duplicate_variation_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT.replace("key: treatment", "key: control"))
    assert "duplicate variation key 'control'" in _error(path).message


def test_unknown_condition_operator(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT + "    condition: {country: {$inn: [NL]}}\n")
    err = _error(path)
    assert err.field == "experiments[0].condition.country.$inn" and err.line == 13
    assert "unknown operator '$inn'" in err.message and "$in" in err.message


def test_invalid_regex_in_condition(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT + "    condition: {agent: {$regex: '(unclosed'}}\n")
    assert "invalid regular expression" in _error(path).message


def test_python_only_regex_names_file_line_and_key_and_the_javascript_way(tmp_path: Path) -> None:
    condition = """\
    condition:
      $or:
        - {country: NL}
        - os:
            $regex: "(?i)^ios"
"""
    path = _write(tmp_path, GOOD_EXPERIMENT + condition)
    err = _error(path)
    assert (err.experiment, err.field, err.line) == ("exp-a", "experiments[0].condition.$or[1].os.$regex", 17)
    assert err.describe().startswith(f"{path}:17: experiment 'exp-a': field 'experiments[0].condition.$or[1]")
    assert "is not JavaScript" in err.message and "use $regexi" in err.message


def test_unknown_field_lists_allowed_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path, GOOD_EXPERIMENT.replace("    status: running\n", "    status: running\n    coverge: 0.5\n")
    )
    err = _error(path)
    assert "unknown field 'coverge'" in err.message and "'coverage'" in err.message and err.line == 9


def test_payload_model_missing_from_repository_callback(tmp_path: Path) -> None:
    known = {("ranking", "mmoe", "1"), ("retrieval", "ssmtl-retrieval-only", "1")}
    err = _error(_write(tmp_path, GOOD_EXPERIMENT), model_exists=lambda s, n, v: (s, n, v) in known)
    assert "ranking model mmoe+dml/1 is not in the model repository" in err.message
    assert err.field == "experiments[0].variations[1].payload.model_name" and err.line == 12


def test_payload_model_checked_against_repository_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for kind, name in (("ranking", "mmoe"), ("ranking", "mmoe+dml"), ("retrieval", "ssmtl-retrieval-only")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "manifest.json").write_text(
            json.dumps({"kind": kind, "name": name, "version": "1"})
        )
    path = _write(tmp_path, GOOD_EXPERIMENT)
    assert Router.from_file(path, model_exists=repository_checker(repo))
    (repo / "mmoe+dml" / "1" / "manifest.json").unlink()
    assert "mmoe+dml/1" in _error(path, model_exists=repository_checker(repo)).message


def _repository_with_tasks(root: Path, tasks: dict[str, list[str]]) -> Path:
    for name, names in tasks.items():
        (root / name / "1").mkdir(parents=True)
        manifest = {"kind": "ranking", "tasks": [{"name": t, "type": "binary"} for t in names]}
        (root / name / "1" / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_task_weights_must_name_tasks_of_the_model(tmp_path: Path) -> None:
    """A misspelt task weighed 0 in the ranker: with every name misspelt, all candidates scored 0 and Rank
    returned them in input order, with nothing logged."""
    repo = _repository_with_tasks(tmp_path / "repo", {"mmoe": ["click", "watch"], "mmoe+dml": ["click"]})
    control = "payload: {model_name: mmoe, model_version: 1}}"
    body = GOOD_EXPERIMENT.replace(control, control[:-2] + ", task_weights: {click: 1, wacth: 2}}}")
    assert Router.from_file(_write(tmp_path, GOOD_EXPERIMENT), ranking_tasks=repository_tasks(repo))
    err = _error(_write(tmp_path, body), ranking_tasks=repository_tasks(repo))
    assert err.field == "experiments[0].variations[0].payload.task_weights.wacth" and err.line == 11
    assert "unknown task 'wacth' for ranking model mmoe/1, whose tasks are 'click', 'watch'" in err.message


def test_inherited_task_weights_must_name_tasks_of_the_variations_model(tmp_path: Path) -> None:
    """A variation without task_weights takes the ranking default's: they must fit its own model too."""
    repo = _repository_with_tasks(tmp_path / "repo", {"mmoe": ["click"], "mmoe+dml": ["ctr", "watch"]})
    err = _error(_write(tmp_path, GOOD_EXPERIMENT), ranking_tasks=repository_tasks(repo))
    assert err.field == "experiments[0].variations[1].payload.model_name" and err.line == 12
    assert "task_weights (defaults.ranking's): unknown task 'click' for ranking model mmoe+dml/1" in (
        err.message
    )
    (repo / "mmoe+dml" / "1" / "manifest.json").write_text("{")  # unknown tasks: model_exists reports it
    assert Router.from_file(_write(tmp_path, GOOD_EXPERIMENT), ranking_tasks=repository_tasks(repo))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = GOOD_EXPERIMENT.replace(
        "    status: running\n", "    status: running\n    coverage: -1\n    colour: red\n"
    )
    err = _error(_write(tmp_path, bad))
    assert len(err.errors) == 2  # type: ignore[attr-defined]
    assert "coverage" in err.describe() and "colour" in err.describe()


def test_task_weights_rejected_on_retrieval(tmp_path: Path) -> None:
    body = GOOD_EXPERIMENT.replace("stage: ranking", "stage: retrieval").replace(
        "name: ranking,", "name: retrieval,"
    )
    body = body.replace("model_version: 1}}", "model_version: 1, task_weights: {click: 1}}}", 1)
    assert "task_weights only apply to the ranking stage" in _error(_write(tmp_path, body)).message


def test_forced_variation_must_exist(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT + "    forced: {treatmnt: [qa-1]}\n")
    assert "forced variation 'treatmnt' is not a variation key" in _error(path).message


def test_unknown_holdout_group(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT + "    holdout: q4\n")
    assert "unknown holdout group 'q4'" in _error(path).message


@pytest.mark.parametrize(
    ("old", "field"),
    [("key: exp-a", "key"), ("key: treatment", "variations[1].key"), ("model_name: mmoe+dml", "model_name")],
)
def test_a_name_too_long_for_an_exposure_event_is_refused(tmp_path: Path, old: str, field: str) -> None:
    """The event producer refuses names over 256 bytes: such a config loaded and lost every exposure."""
    name = old.split(": ")[0] + ": " + "é" * 129  # 129 characters, 258 bytes
    err = _error(_write(tmp_path, GOOD_EXPERIMENT.replace(old, name, 1)))
    assert "longer than 256 bytes" in err.message and field in (err.field or "") and err.line is not None


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_EXPERIMENT + "    condition: {country: [NL\n")
    err = _error(path)
    assert "invalid YAML" in err.message and err.line is not None and err.file == str(path)
    # one line, naming the file rather than PyYAML's "<unicode string>" and its caret excerpt
    assert "\n" not in str(err) and "<unicode string>" not in str(err) and "(column " in err.message


def test_json_is_accepted_and_errors_have_lines(tmp_path: Path) -> None:
    data = base_config()
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(data, indent=2))
    assert Router.from_file(path).experiment_keys == ("exp-a",)
    data["experiments"][0]["coverage"] = 2
    path.write_text(json.dumps(data, indent=2))
    err = _error(path)
    assert err.experiment == "exp-a" and err.line is not None and err.field == "experiments[0].coverage"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("/nonexistent/exp.yaml")


@pytest.mark.parametrize(
    "text", ["", "  \n\n", "# experiments go here\n"], ids=["0-bytes", "blank", "comment"]
)
def test_an_empty_file_names_file_and_line_1(tmp_path: Path, text: str) -> None:
    """YAML reads an empty file as no document, so the error had no line where every other one has."""
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    err = _error(path)
    assert str(err) == (
        f"{path}:1: the file is empty (or holds only comments): "
        "expected a mapping with 'defaults' and 'experiments'"
    )


def test_model_version_is_a_string(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD_EXPERIMENT))
    assert config.experiments[0].variations[1].payload.model_version == "1"


def test_every_layer_overlap_is_reported_not_only_with_the_neighbouring_range(tmp_path: Path) -> None:
    body = GOOD_EXPERIMENT + "".join(
        GOOD_EXPERIMENT.replace("exp-a", key).replace("[0.0, 0.5]", layer_range)
        for key, layer_range in (("exp-b", "[0.1, 0.2]"), ("exp-c", "[0.3, 0.6]"))
    )
    err = _error(_write(tmp_path, body))
    assert isinstance(err, ConfigErrors)
    assert [(e.experiment, e.line) for e in err.errors] == [("exp-b", 16), ("exp-c", 23)]
    assert "[0.3, 0.6] overlaps experiment 'exp-a' range [0.0, 0.5]" in err.errors[1].message


def test_a_layers_experiments_must_hash_one_attribute(tmp_path: Path) -> None:
    """A user's place in a layer is hashed from each experiment's attribute: with two attributes, disjoint
    ranges let a user into both (the ranker served one and logged exposures for the other's variant)."""
    other = GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("[0.0, 0.5]", "[0.5, 1.0]")
    running = "    status: running\n"
    body = GOOD_EXPERIMENT + other.replace(running, running + "    hash_attribute: device\n")
    err = _error(_write(tmp_path, body))
    assert err.field == "experiments[1].hash_attribute" and err.line == 16, err.describe()
    assert "must hash the same attribute: 'exp-b' hashes 'device'" in err.message
    assert Router.from_file(_write(tmp_path, GOOD_EXPERIMENT + other))


@pytest.mark.parametrize(
    ("start", "end", "valid"),
    [
        ("2026-01-01T00:00:00", "2026-01-01T00:00:01Z", True),  # no zone is UTC
        ("2026-01-01T00:00:00+02:00", "2026-01-01T00:00:00", True),  # 22:00 UTC the day before
        ("2026-01-01T00:00:00", "2026-01-01T01:00:00+02:00", False),  # 23:00 UTC the day before
        ("2026-01-01", "2026-01-01T00:00:00Z", False),  # a YAML date is midnight UTC
    ],
)
def test_end_must_follow_start_whether_or_not_they_name_a_zone(
    tmp_path: Path, start: str, end: str, valid: bool
) -> None:
    """A start without a zone and an end with one (or the reverse) raised TypeError, a traceback."""
    window = f"    status: running\n    start: {start}\n    end: {end}\n"
    path = _write(tmp_path, GOOD_EXPERIMENT.replace("    status: running\n", window))
    if valid:
        assert Router.from_file(path).experiment_keys == ("exp-a",)
    else:
        err = _error(path)
        assert err.message == "end must be after start" and err.experiment == "exp-a"
        assert (err.field, err.line) == ("experiments[0].end", 10)  # the experiment's line 6 before


def test_a_user_forced_into_two_experiments_of_one_stage_is_refused(tmp_path: Path) -> None:
    second = GOOD_EXPERIMENT.replace("exp-a", "exp-b").replace("[0.0, 0.5]", "[0.5, 1.0]")
    draft = GOOD_EXPERIMENT.replace("exp-a", "exp-c").replace("status: running", "status: draft")
    retrieval = GOOD_EXPERIMENT.replace("exp-a", "exp-r").replace("stage: ranking", "stage: retrieval")
    retrieval = retrieval.replace("name: ranking", "name: retrieval").replace("mmoe", "ssmtl")
    forced = "    forced: {treatment: [qa-1]}\n"
    err = _error(_write(tmp_path, GOOD_EXPERIMENT + forced + second + draft + forced + retrieval + forced))
    assert err.experiment == "exp-c" and err.field == "experiments[2].forced.treatment" and err.line == 28
    assert err.message == (
        "user 'qa-1' is already forced into 'exp-a' (experiments[0]), another ranking experiment: "
        "one model per stage"
    )
    assert isinstance(err, ConfigErrors) and len(err.errors) == 1  # another stage may force them too


@pytest.mark.parametrize(
    ("condition", "field", "message"),
    [
        ("{signup: {$gt: 2026-01-01}}", "signup.$gt", "2026-01-01 is a date, not a JSON value: quote it"),
        ("{seen: {$in: [2026-01-01T10:00:00Z]}}", "seen.$in[0]", "2026-01-01T10:00:00+00:00 is a datetime"),
        ("{$or: [{1: 5}]}", "$or[0][1]", "key 1 must be a string (quote it)"),  # was an AttributeError
    ],
)
def test_condition_values_must_be_json(tmp_path: Path, condition: str, field: str, message: str) -> None:
    """YAML reads an unquoted date as a date, which matched nothing and broke `preview` (json.dumps)."""
    path = _write(tmp_path, GOOD_EXPERIMENT + f"    condition: {condition}\n")
    err = _error(path)
    assert err.field == f"experiments[0].condition.{field}" and err.line == 13 and message in err.message


def test_nested_aliases_are_walked_once_for_line_numbers(tmp_path: Path) -> None:
    """Each alias repeats its anchor's node: walking it at every alias visited 10**levels paths (8 lines of
    anchors stalled `validate` for minutes); each node is now walked once and errors still name their lines."""
    levels = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 5)]
    text = "\n".join(levels) + "\n"
    assert len(_line_map(text)) < 100  # 111,116 paths before
    err = _error(_write(tmp_path, HEADER + "  []\n" + text))
    assert isinstance(err, ConfigErrors)
    assert any(e.field == "l4" and e.line == 11 for e in err.errors), err.describe()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-13-01", "month must be in 1..12"),
        ("2026-02-30", "day is out of range"),
        ("0000-01-01", "year 0"),
    ],
)
def test_an_impossible_date_names_its_field_and_line(tmp_path: Path, value: str, reason: str) -> None:
    """PyYAML raised a bare ValueError for a date that does not exist: a traceback without file or line."""
    window = f"    status: running\n    start: {value}\n"
    path = _write(tmp_path, GOOD_EXPERIMENT.replace("    status: running\n", window))
    err = _error(path)
    assert (err.experiment, err.field, err.line) == ("exp-a", "experiments[0].start", 9)
    assert err.message.startswith(f"invalid date {value!r}: {reason}") and "\n" not in err.describe()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("coverage", "true"),  # was coverage 1.0: every user
        ("coverage", "'0.5'"),
        ("hash_version", "true"),  # was hash version 1: every user re-hashed
        ("sticky", "'no'"),
        ("bucket_version", "'2'"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_converted(tmp_path: Path, field: str, value: str) -> None:
    """Pydantic's lax mode converted booleans and strings into numbers and flags without a word."""
    running = "    status: running\n"
    path = _write(tmp_path, GOOD_EXPERIMENT.replace(running, f"{running}    {field}: {value}\n"))
    err = _error(path)
    assert (err.experiment, err.field, err.line) == ("exp-a", f"experiments[0].{field}", 9)
    assert "Input should be" in err.message


CONTROL = "weight: 0.5, payload: {model_name: mmoe,"
TREATMENT = "weight: 0.5, payload: {model_name: mmoe+dml"


def test_a_weight_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, GOOD_EXPERIMENT.replace(CONTROL, CONTROL.replace("0.5", "true"))))
    assert (err.field, err.line) == ("experiments[0].variations[0].weight", 11)


@pytest.mark.parametrize(
    ("old", "new", "field", "line"),
    [
        (TREATMENT, TREATMENT.replace("0.5", "0.7"), "variations", 10),
        (TREATMENT, TREATMENT.replace("weight: 0.5, ", ""), "variations[1]", 12),
        (TREATMENT, TREATMENT.replace("weight: 0.5", "range: [0.4, 1]"), "variations[0]", 11),
        (
            "    status: running\n",
            "    status: running\n    min_bucket_version: 1\n",
            "min_bucket_version",
            9,
        ),
    ],
)
def test_a_check_across_fields_names_the_field_it_is_about(
    tmp_path: Path, old: str, new: str, field: str, line: int
) -> None:
    """Weights not summing to 1 and the like named the experiment (line 6), not the field to fix."""
    err = _error(_write(tmp_path, GOOD_EXPERIMENT.replace(old, new)))
    assert (err.experiment, err.field, err.line) == ("exp-a", f"experiments[0].{field}", line), err.describe()


def test_overlapping_variation_ranges_name_the_later_range(tmp_path: Path) -> None:
    body = GOOD_EXPERIMENT.replace(TREATMENT, TREATMENT.replace("weight: 0.5", "range: [0.4, 1]"))
    body = body.replace(CONTROL, CONTROL.replace("weight: 0.5", "range: [0, 0.5]"))
    err = _error(_write(tmp_path, body))
    assert (err.field, err.line) == ("experiments[0].variations[1].range", 12)
    assert "[0.0, 0.5] and [0.4, 1.0] overlap" in err.message


@pytest.mark.parametrize(
    ("condition", "field", "message"),
    [
        ("{country: {$in: NL}}", "country.$in", "expects a list, got string 'NL'"),  # nobody targeted
        ("{country: {$nin: NL}}", "country.$nin", "expects a list"),  # nobody targeted either
        ("{app: {$vgte: 1.10}}", "app.$vgte", "expects a version string, got number 1.1: quote it"),
        ("{email: {$exists: 'no'}}", "email.$exists", "expects true or false, got string 'no'"),
        ("{age: {$type: int}}", "age.$type", "unknown type 'int'"),
        ("{$not: {user_id: {$inGroup: qa-tem}}}", "$not.user_id.$inGroup", "unknown saved group 'qa-tem'"),
    ],
)
def test_a_condition_operand_of_the_wrong_type_names_file_line_and_key(
    tmp_path: Path, condition: str, field: str, message: str
) -> None:
    """The SDK reads such an operand as false for every user (true for $nin, $ne, $notInGroup): these configs
    loaded and targeted nobody, or everybody, without a word."""
    groups = "saved_groups: {qa-team: [u1]}\n"
    path = _write(tmp_path, GOOD_EXPERIMENT + f"    condition: {condition}\n")
    path.write_text(path.read_text().replace("experiments:\n", groups + "experiments:\n"))
    err = _error(path)
    assert (err.file, err.line, err.field) == (str(path), 14, f"experiments[0].condition.{field}")
    assert message in err.message and "\n" not in err.describe()


def test_tab_indented_json_keeps_its_lines_and_refuses_duplicate_keys(tmp_path: Path) -> None:
    """YAML refuses tabs, so the line map of a tab-indented JSON file (jq --tab, Go's MarshalIndent) was
    empty: no line in any error, and a duplicate key went through with the last one winning (status: draft)."""
    data = base_config()
    path = tmp_path / "exp.json"
    text = json.dumps(data, indent="\t")
    text = text.replace('"status": "running",', '"status": "running",\n\t\t\t"status": "draft",')
    path.write_text(text)
    err = _error(path)
    line = text.splitlines().index('\t\t\t"status": "draft",') + 1
    assert (err.field, err.line, err.message) == ("experiments[0].status", line, "duplicate key 'status'")
    data["experiments"][0]["coverage"] = 2
    text = json.dumps(data, indent="\t")
    path.write_text(text)
    err = _error(path)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if '"coverage": 2' in row)
    assert (err.field, err.line) == ("experiments[0].coverage", line)


def test_json_with_a_byte_order_mark_loads_as_yaml_with_one_does(tmp_path: Path) -> None:
    """A BOM (Notepad writes one) was refused in JSON only, telling the user to 'decode using utf-8-sig'."""
    for name, text in (
        ("exp.json", json.dumps(base_config(), indent=2)),
        ("exp.yaml", HEADER + GOOD_EXPERIMENT),
    ):
        path = tmp_path / name
        path.write_text("\ufeff" + text, encoding="utf-8")
        assert Router.from_file(path).experiment_keys == ("exp-a",)


def test_a_file_that_is_not_utf8_names_the_line_and_column_of_the_first_stray_byte(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_bytes((HEADER + GOOD_EXPERIMENT).replace("name: ranking", "name: rankinÿ").encode("latin-1"))
    err = _error(path)
    assert (err.file, err.line) == (str(path), 9)
    assert err.message == (
        "cannot read config: not UTF-8 text: byte 0xff (invalid start byte) (column 25); "
        "save the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("key: treatment", 'key: "control "', "variations[1].key", "'control ' has leading or trailing"),
        ("key: exp-a", 'key: " exp-a"', "key", "' exp-a' has leading or trailing whitespace"),
        ("key: treatment", 'key: "treat\\tment"', "variations[1].key", "invisible character U+0009"),
        ("key: treatment", 'key: "control\\u200b"', "variations[1].key", "U+200B (ZERO WIDTH SPACE)"),
        ("model_name: mmoe+dml", 'model_name: "mmoe\\0dml"', "variations[1].payload.model_name", "U+0000"),
    ],
)
def test_a_key_with_whitespace_around_or_invisible_characters_is_refused(
    tmp_path: Path, old: str, new: str, field: str, message: str
) -> None:
    """'control ' loaded beside 'control': exposures carried a key that reads like another one."""
    err = _error(_write(tmp_path, GOOD_EXPERIMENT.replace(old, new, 1)))
    assert err.field == f"experiments[0].{field}" and err.line is not None and message in err.message


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            GOOD_EXPERIMENT.replace("key: treatment", "key: Control"),
            "experiments[0].variations[1].key",
            "variation key 'Control' differs from 'control' (variations[0]) only in case or Unicode form",
        ),
        (
            GOOD_EXPERIMENT.replace("key: control", 'key: "caf\\u00e9"').replace(
                "key: treatment", 'key: "cafe\\u0301"'
            ),
            "experiments[0].variations[1].key",
            "variation key 'cafe\\u0301' differs from 'caf\\xe9' (variations[0])",
        ),
        (
            GOOD_EXPERIMENT + GOOD_EXPERIMENT.replace("exp-a", "EXP-A").replace("[0.0, 0.5]", "[0.5, 1.0]"),
            "experiments[1].key",
            "experiment key 'EXP-A' differs from 'exp-a' (experiments[0])",
        ),
    ],
)
def test_keys_differing_only_in_case_or_unicode_form_are_refused(
    tmp_path: Path, body: str, field: str, message: str
) -> None:
    """Two arms 'control' and 'Control' loaded: reports showed two that read alike, case-insensitive SQL
    merged them."""
    err = _error(_write(tmp_path, body))
    assert err.field == field and err.line is not None and message in err.message, err.describe()
