"""Read experiment config files into a validated RouterConfig, naming file, experiment, field and line.

The whole file is validated before anything is returned, so a bad config never half-loads.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from experiment_router.conditions import validate_condition
from experiment_router.errors import ConfigError, ConfigErrors, UnknownOperatorError
from experiment_router.schema import (
    INTERLEAVED,
    STAGES,
    ExperimentConfig,
    FieldProblem,
    LayerConfig,
    RouterConfig,
)

logger = logging.getLogger(__name__)

ModelExists = Callable[[str, str, str], bool]
"""`model_exists(stage, model_name, model_version) -> bool`, asked for every payload of a config."""

RankingTasks = Callable[[str, str], Collection[str] | None]
"""`ranking_tasks(model_name, model_version)`: the task names of a ranking model version, None when unknown."""

Path_ = tuple[str | int, ...]

_TOP_LEVEL = "a mapping with 'defaults' and 'experiments'"


def _line_map(text: str) -> dict[Path_, int]:
    """1-based line of every mapping key / sequence item, by path; flags duplicate mapping keys.

    A node is walked once: an alias repeats its anchor's node, and walking it again at every alias took time
    exponential in the nesting of aliases (a few lines of anchors stalled `validate` and the servers' reload);
    a path under a repeated alias takes the line recorded for the alias itself."""
    lines: dict[Path_, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    walked: set[int] = set()

    def walk(node: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise ConfigError(
                        f"duplicate key {key!r}",
                        field=_dotted(path + (key,)),
                        line=key_node.start_mark.line + 1,
                    )
                seen.add(key)
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Locator:
    """Turns a path inside the document into (experiment key, dotted field, line)."""

    def __init__(self, file: str, data: Any, lines: dict[Path_, int]) -> None:
        self.file, self.data, self.lines = file, data, lines

    def line(self, path: Path_) -> int | None:
        """Line of `path`, or of its closest ancestor the file shows (a missing key has no line)."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def error(self, message: str, path: Path_) -> ConfigError:
        line = self.line(path)
        experiment = None
        if len(path) >= 2 and path[0] == "experiments" and isinstance(path[1], int):
            try:
                experiment = self.data["experiments"][path[1]].get("key")
            except (KeyError, IndexError, TypeError, AttributeError):
                experiment = None
        return ConfigError(message, file=self.file, experiment=experiment, field=_dotted(path), line=line)


class InvalidDate:
    """What YAML reads as a date but is none (`2026-13-01`): PyYAML raised a bare ValueError, a traceback
    without file or line; the loader keeps this in its place and reports it with its field and line."""

    def __init__(self, text: str, reason: str) -> None:
        self.text, self.reason = text, reason


class _ConfigYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with an invalid date kept as an `InvalidDate` instead of raised."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            return InvalidDate(str(node.value), str(exc))


_ConfigYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigYamlLoader.construct_yaml_timestamp)


def _invalid_dates(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, InvalidDate]]:
    """Every `InvalidDate` in a parsed document, with its path."""
    if isinstance(value, InvalidDate):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _invalid_dates(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _invalid_dates(item, path + (i,))


def read_config_text(path: str | Path) -> str:
    """A config file's text; a file that is not UTF-8 is reported with the line and column of its first
    stray byte (an editor that saved one accented name in Latin-1 left the user to search the whole file)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line_start = before.rfind(b"\n") + 1
        column = len(before[line_start:].decode("utf-8", "replace")) + 1
        raise ConfigError(
            f"cannot read config: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} ({exc.reason}) "
            f"(column {column}); save the file as UTF-8",
            file=str(path),
            line=before.count(b"\n") + 1,
        ) from None


def parse_text(text: str, file: str = "<config>") -> tuple[Any, dict[Path_, int]]:
    """Parse YAML (or JSON, a YAML subset) keeping the line of every node.

    JSON may open with a byte order mark (RFC 8259 lets a parser ignore it; Windows editors write one, and
    YAML files with one load) and be indented with tabs, which YAML refuses: JSON allows a tab only between
    tokens, so the line map reads tabs as spaces (it found no line and no duplicate key in such a file)."""
    is_json = file.endswith(".json")
    if is_json:
        text = text.removeprefix("\ufeff")
    try:
        data = json.loads(text) if is_json else yaml.load(text, Loader=_ConfigYamlLoader)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", file=file, line=exc.lineno) from None
    except yaml.MarkedYAMLError as exc:  # its text spans lines and names "<unicode string>", not the file
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(
            f"invalid YAML: {problem}{column}", file=file, line=mark.line + 1 if mark is not None else None
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    try:
        lines = _line_map(text.replace("\t", " ") if is_json else text)
    except ConfigError as exc:  # a duplicate mapping key: add the file name
        raise ConfigError(exc.message, file=file, field=exc.field, line=exc.line) from None
    except yaml.YAMLError:
        lines = {}
    return data, lines


def load_config(
    source: str | Path | Mapping[str, Any],
    *,
    model_exists: ModelExists | None = None,
    ranking_tasks: RankingTasks | None = None,
    text: str | None = None,
) -> RouterConfig:
    """Load and validate a config.

    Args:
        source: a file path, or an already parsed mapping.
        model_exists: optional check that every payload names a model in the model repository.
        ranking_tasks: optional lookup of a ranking model's tasks, which every ``task_weights`` must name.
        text: the file's contents, when the caller has already read them (hot reload hashes them).

    Raises:
        ConfigError: every problem found, each naming file, experiment key, field and line.
    """
    lines: dict[Path_, int]
    if isinstance(source, Mapping):
        file, data, lines = "<config>", source, {}
    else:
        file = str(source)
        if text is None:
            text = read_config_text(source)
        data, lines = parse_text(text, file)
    locate = _Locator(file, data, lines)
    if data is None and () not in lines:  # no document at all: YAML has no node, so no line to point at
        message = f"the file is empty (or holds only comments): expected {_TOP_LEVEL}"
        raise ConfigError(message, file=file, line=1)
    if not isinstance(data, Mapping):
        raise locate.error(f"the top level must be {_TOP_LEVEL}", ())
    bad_dates = [
        locate.error(f"invalid date {bad.text!r}: {bad.reason} (quote it if it is no date)", path)
        for path, bad in _invalid_dates(data)
    ]
    if bad_dates:
        raise ConfigErrors(bad_dates)
    try:
        config = RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors([_pydantic_error(locate, err) for err in exc.errors()]) from None
    problems = list(_semantic_problems(config, locate, model_exists))
    if ranking_tasks is not None:
        problems += _task_weight_problems(config, locate, ranking_tasks)
    if problems:
        raise ConfigErrors(problems)
    return config


def _pydantic_error(locate: _Locator, err: Mapping[str, Any]) -> ConfigError:
    path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    message = err["msg"].removeprefix("Value error, ")
    problem = err.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):  # a check across fields names the one it is about
        path += problem.at
    if err["type"] == "extra_forbidden":
        message = f"unknown field {path[-1]!r}; {_allowed_fields(path)}"
    return locate.error(message, path)


def _allowed_fields(path: Path_) -> str:
    model: Any = RouterConfig
    for part in path[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return "check the spelling"
        model = _inner_model(field.annotation)
    if model is None:
        return "check the spelling"
    return f"allowed: {sorted(model.model_fields)}"


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _semantic_problems(
    config: RouterConfig, locate: _Locator, model_exists: ModelExists | None
) -> Iterator[ConfigError]:
    """Cross-field checks pydantic cannot do field by field."""
    for i, problem in _clashing_keys([exp.key for exp in config.experiments], "experiment"):
        yield locate.error(problem, ("experiments", i, "key"))
    for i, exp in enumerate(config.experiments):
        yield from _experiment_problems(config, exp, ("experiments", i), locate)
    yield from _layer_problems(config, locate)
    yield from _forced_stage_problems(config, locate)
    if model_exists is not None:
        for stage, payload in config.defaults.items():
            if not model_exists(stage, payload.model_name, payload.model_version):
                yield locate.error(
                    f"{stage} model {payload.model_name}/{payload.model_version} is not in the model repository",
                    ("defaults", stage),
                )
        for i, exp in enumerate(config.experiments):
            for j, var in enumerate(exp.variations):
                p = var.payload
                if not model_exists(exp.stage, p.model_name, p.model_version):
                    yield locate.error(
                        f"{exp.stage} model {p.model_name}/{p.model_version} is not in the model repository",
                        ("experiments", i, "variations", j, "payload", "model_name"),
                    )
    for stage, payload in config.defaults.items():
        if stage == "retrieval" and payload.task_weights:
            yield locate.error(
                "task_weights only apply to the ranking stage", ("defaults", stage, "task_weights")
            )


def _task_weight_problems(
    config: RouterConfig, locate: _Locator, ranking_tasks: RankingTasks
) -> Iterator[ConfigError]:
    """Every task a ranking payload weighs, its own ``task_weights`` or those it inherits from the ranking
    default, must be a task of its model: the ranker counts an unnamed task 0, so a misspelt name would silently
    drop that task from the merged score (all of them: every candidate scored 0, the list left in input order)."""
    default = config.defaults["ranking"]
    weighed: list[tuple[str, str, dict[str, float], Path_, str]] = []
    if default.task_weights:
        weighed.append(
            (default.model_name, default.model_version, default.task_weights, ("defaults", "ranking"), "")
        )
    for i, exp in enumerate(config.experiments):
        if exp.stage != "ranking":
            continue
        for j, var in enumerate(exp.variations):
            p = var.payload
            path: Path_ = ("experiments", i, "variations", j, "payload")
            if p.task_weights:
                weighed.append((p.model_name, p.model_version, p.task_weights, path, ""))
            elif p.task_weights is None and default.task_weights:
                inherited = " (defaults.ranking's)"
                weighed.append((p.model_name, p.model_version, default.task_weights, path, inherited))
    for name, version, weights, path, whose in weighed:
        tasks = ranking_tasks(name, version)
        if tasks is None:
            continue
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            where = path + ("task_weights", unknown[0]) if not whose else path + ("model_name",)
            yield locate.error(
                f"task_weights{whose}: unknown task {', '.join(map(repr, unknown))} for ranking model "
                f"{name}/{version}, whose tasks are {', '.join(map(repr, tasks))}",
                where,
            )


def _clashing_keys(keys: Sequence[str], kind: str) -> Iterator[tuple[int, str]]:
    """(index, problem) of every key equal to an earlier one, or differing from it only in case or Unicode
    form ('Control' and 'control', a composed and a decomposed 'café'): reports, dashboards and analysis
    configs would show two that read alike, and case-insensitive SQL would merge them."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        folded = unicodedata.normalize("NFKC", key).casefold()
        j = first.setdefault(folded, i)
        if j == i:
            continue
        where = f"{kind}s[{j}]"
        if keys[j] == key:
            yield i, f"duplicate {kind} key {key!r} (first at {where})"
        else:
            # ascii(): a composed and a decomposed letter print alike
            problem = f"differs from {ascii(keys[j])} ({where}) only in case or Unicode form; rename one"
            yield i, f"{kind} key {ascii(key)} {problem}"


def _experiment_problems(
    config: RouterConfig, exp: ExperimentConfig, base: Path_, locate: _Locator
) -> Iterator[ConfigError]:
    if exp.condition is not None:
        not_json = _not_json(exp.condition, ())
        if not_json is not None:
            yield locate.error(not_json[1], base + ("condition", *not_json[0]))
        else:
            try:
                validate_condition(exp.condition, saved_groups=config.saved_groups.keys())
            except UnknownOperatorError as exc:
                yield locate.error(exc.reason, base + ("condition", *exc.keys))
    if exp.holdout is not None and exp.holdout not in config.holdout_groups:
        yield locate.error(
            f"unknown holdout group {exp.holdout!r}; defined: {sorted(config.holdout_groups)}",
            base + ("holdout",),
        )
    variation_keys = [v.key for v in exp.variations]
    for j, problem in _clashing_keys(variation_keys, "variation"):
        yield locate.error(problem, base + ("variations", j, "key"))
    for j, variation in enumerate(exp.variations):
        if exp.stage == "retrieval" and variation.payload.task_weights:
            yield locate.error(
                "task_weights only apply to the ranking stage",
                base + ("variations", j, "payload", "task_weights"),
            )
    seen_users: dict[str, str] = {}
    # QA may force a user into one arm alone, or (interleaving) into the merged list.
    forceable = variation_keys + [INTERLEAVED] if exp.kind == "interleaving" else variation_keys
    for key, users in exp.forced.items():
        if key not in forceable:
            yield locate.error(
                f"forced variation {key!r} is not a variation key; variations: {forceable}",
                base + ("forced", key),
            )
        for user in users:
            if user in seen_users and seen_users[user] != key:
                yield locate.error(
                    f"user {user!r} is forced into both {seen_users[user]!r} and {key!r}",
                    base + ("forced", key),
                )
            seen_users[user] = key
    yield from _kind_problems(exp, base, locate)


def _not_json(value: Any, path: Path_) -> tuple[Path_, str] | None:
    """Where a condition holds something JSON has no type for, and why: conditions compare JSON values, as in
    every GrowthBook SDK, but YAML reads an unquoted 2026-01-01 as a date (which then matches nothing)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return path + (key,), f"key {key!r} must be a string (quote it)"
            found = _not_json(item, path + (key,))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _not_json(item, path + (i,))
            if found is not None:
                return found
    elif not isinstance(value, str | int | float | bool | None):
        text = value.isoformat() if isinstance(value, date) else str(value)
        return path, f'{text} is a {type(value).__name__}, not a JSON value: quote it ("{text}")'
    return None


# Sticky bucketing keeps a user in their variant when weights change; an interleaving experiment has no
# variant to keep (everyone in it sees both arms), so its sticky settings would be silently ignored.
_STICKY_FIELDS = ("sticky", "bucket_version", "min_bucket_version")


def _kind_problems(exp: ExperimentConfig, base: Path_, locate: _Locator) -> Iterator[ConfigError]:
    """What an experiment's ``kind`` allows: interleaving ranks, with two unweighted arms and a known method."""
    if exp.kind == "ab":
        if "method" in exp.model_fields_set:
            yield locate.error(
                "'method' applies only to experiments of kind 'interleaving'", base + ("method",)
            )
        return
    if exp.stage != "ranking":
        yield locate.error(
            f"an interleaving experiment merges two rankings, so its stage must be 'ranking', not {exp.stage!r}",
            base + ("stage",),
        )
    if exp.method == "balanced":
        yield locate.error(
            "method 'balanced' is not implemented: balanced interleaving credits clicks from both arms' full "
            "rankings, which exposures do not carry; use 'team_draft'",
            base + ("method",),
        )
    if len(exp.variations) != 2:
        yield locate.error(
            f"an interleaving experiment has exactly two arms (variations), got {len(exp.variations)}",
            base + ("variations",),
        )
    for j, var in enumerate(exp.variations):
        for name in ("weight", "range"):
            if getattr(var, name) is not None:
                yield locate.error(
                    f"interleaving arms take no {name}: every user in the experiment sees both arms; "
                    "size the experiment with 'coverage'",
                    base + ("variations", j, name),
                )
        if var.key == INTERLEAVED:
            yield locate.error(
                f"{INTERLEAVED!r} is reserved for users who see both arms; name the arm otherwise",
                base + ("variations", j, "key"),
            )
    for name in _STICKY_FIELDS:
        if name in exp.model_fields_set:
            yield locate.error(
                f"{name!r} does not apply to interleaving: there is no variant to keep a user in "
                "(everyone in the experiment sees both arms)",
                base + (name,),
            )


def _layer_problems(config: RouterConfig, locate: _Locator) -> Iterator[ConfigError]:
    """Running experiments in one layer must not overlap; one stage must not span several layers."""
    by_layer: dict[str, list[tuple[int, ExperimentConfig, LayerConfig]]] = {}
    stage_layers: dict[str, dict[str | None, int]] = {s: {} for s in STAGES}
    for i, exp in enumerate(config.experiments):
        if exp.status != "running":
            continue
        layer = exp.layer.name if exp.layer else None
        if exp.layer is not None:
            by_layer.setdefault(exp.layer.name, []).append((i, exp, exp.layer))
        layers_of_stage = stage_layers[exp.stage]
        if layer is None and layers_of_stage or layer not in layers_of_stage and layers_of_stage:
            other = next(iter(layers_of_stage.values()))
            yield _stage_layer_conflict(config, locate, i, other)
        layers_of_stage.setdefault(layer, i)
    for members in by_layer.values():
        _, first, _ = members[0]
        for j, exp, exp_layer in members[1:]:
            if exp.hash_attribute != first.hash_attribute:
                # a user's position in a layer is hashed from the experiment's attribute: with another one,
                # disjoint ranges no longer keep a user out of two experiments
                yield locate.error(
                    f"experiments of layer {exp_layer.name!r} must hash the same attribute: {exp.key!r} hashes "
                    f"{exp.hash_attribute!r}, {first.key!r} {first.hash_attribute!r}",
                    ("experiments", j, "hash_attribute"),
                )
        ordered = sorted(members, key=lambda m: m[2].range)
        # compare each range with the one reaching furthest so far, not just its neighbour: in [0, 0.5],
        # [0.1, 0.2], [0.3, 0.6] the last overlaps the first
        _, a, a_layer = ordered[0]
        for j, b, b_layer in ordered[1:]:
            if b_layer.range[0] < a_layer.range[1]:
                yield locate.error(
                    f"layer {b_layer.name!r} range {list(b_layer.range)} overlaps experiment {a.key!r} "
                    f"range {list(a_layer.range)}",
                    ("experiments", j, "layer", "range"),
                )
            if b_layer.range[1] > a_layer.range[1]:
                a, a_layer = b, b_layer


def _forced_stage_problems(config: RouterConfig, locate: _Locator) -> Iterator[ConfigError]:
    """A user forced into two experiments of one stage would get two models for it: say which two."""
    first: dict[tuple[str, str], int] = {}
    for i, exp in enumerate(config.experiments):
        for key, users in exp.forced.items():
            for user in users:
                j = first.setdefault((exp.stage, user), i)
                if j != i:
                    yield locate.error(
                        f"user {user!r} is already forced into {config.experiments[j].key!r} "
                        f"(experiments[{j}]), another {exp.stage} experiment: one model per stage",
                        ("experiments", i, "forced", key),
                    )


def _stage_layer_conflict(config: RouterConfig, locate: _Locator, i: int, other: int) -> ConfigError:
    """Two running experiments of one stage that a user could both be in: say which, where, and the fix."""
    exp, first = config.experiments[i], config.experiments[other]
    stage = exp.stage
    line = locate.line(("experiments", other))
    them = f"{first.key!r} (experiments[{other}]" + (f", line {line})" if line else ")")
    if exp.layer is None:
        if first.layer is None:
            problem = f"neither this experiment nor {them} has a layer"
            fix = (
                f"put both in one layer with disjoint ranges, e.g. `layer: {{name: {stage}, range: [0.5, 1]}}` "
                f"here and `layer: {{name: {stage}, range: [0, 0.5]}}` on {first.key!r}"
            )
        else:
            name = first.layer.name
            problem = f"{them} is in layer {name!r} and this experiment in none"
            fix = f"add `layer: {{name: {name}, range: [start, end]}}` here, disjoint from the ranges of {name!r}"
    elif first.layer is None:
        problem = f"this experiment is in layer {exp.layer.name!r} and {them} in none"
        fix = (
            f"add `layer: {{name: {exp.layer.name}, range: [start, end]}}` to {first.key!r}, "
            f"disjoint from this one's {list(exp.layer.range)}"
        )
    else:
        problem = f"this experiment is in layer {exp.layer.name!r} and {them} in layer {first.layer.name!r}"
        fix = f"move it into layer {first.layer.name!r} with a range disjoint from the others there"
    return locate.error(
        f"running {stage} experiments must share one layer, or a user could be in both and get two {stage} "
        f"models: {problem}; {fix} (or stop one of them)",
        ("experiments", i, "layer"),
    )


def repository_tasks(root: str | Path) -> RankingTasks:
    """A `ranking_tasks` that reads the task names of `<root>/<name>/<version>/manifest.json`."""
    base = Path(root)

    def tasks(name: str, version: str) -> list[str] | None:
        try:
            manifest = json.loads((base / name / version / "manifest.json").read_text(encoding="utf-8"))
            return [str(task["name"]) for task in manifest["tasks"]]
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: model_exists reports what is wrong
            return None

    return tasks


def repository_checker(root: str | Path) -> ModelExists:
    """A `model_exists` that looks for `<root>/<name>/<version>/manifest.json` of the right kind."""
    base = Path(root)

    def exists(stage: str, name: str, version: str) -> bool:
        manifest = base / name / version / "manifest.json"
        try:
            kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError):
            return False
        return kind in (None, stage)

    return exists
