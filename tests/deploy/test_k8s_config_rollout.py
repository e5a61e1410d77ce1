"""A change to a ConfigMap rolls, on the next `kubectl apply -k`, exactly the pods that need it: the ones that read
it once, at start (environment variables, subPath mounts, a file a process reads when it starts), and never the
ones that hot-reload it (the ranker's experiments.yaml: a restart would only drop its warm models)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy import clickhouse_configmap
from tests.deploy.test_deploy_files import (
    K8S,
    K8S_BASE,
    OVERLAYS,
    _k8s_invocations,
    _of_kind,
    _pod_specs,
    kustomization,
    kustomize,
    load_k8s,
    overlay_docs,
)

# The flags whose file the entry point watches and reloads (ranker_server.app.watched_router: a ConfigWatcher).
HOT_RELOADED = {("ranker_server", "--experiments")}
CHECKSUM_PATH = "spec.template.metadata.annotations."


@pytest.fixture(scope="module", params=OVERLAYS)
def deployed(request: pytest.FixtureRequest) -> list[dict]:
    docs = load_k8s()
    return docs if request.param == "base" else overlay_docs(docs, request.param)


def _flag_files(args: list[str]) -> Iterator[tuple[str, str]]:
    """(flag, absolute path) for each --flag=/path of a command line."""
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag.startswith("--") and equals and value.startswith("/"):
            yield flag, value


def _folder_reloaded(docs: list[dict], container: dict, mount: dict) -> bool:
    """A folder mount (no subPath: kubelet updates its files) whose every file the container is given is a flag
    its entry point watches."""
    if "subPath" in mount:
        return False
    read = [
        (inv.module, flag)
        for inv, c, _ in _k8s_invocations(docs)
        if c is container
        for flag, path in _flag_files(inv.args)
        if path.startswith(mount["mountPath"].rstrip("/") + "/")
    ]
    return bool(read) and set(read) <= HOT_RELOADED


def config_map_readers(docs: list[dict]) -> dict[tuple[str, str], bool]:
    """(pod template "Kind/name", ConfigMap) -> whether the pod reads it only at start, so that a change needs a
    new pod: environment variables and subPath mounts are read at start, and so is a folder mount unless every
    file the container reads from it is watched."""
    readers: dict[tuple[str, str], bool] = {}

    def read(where: str, name: str, at_start: bool) -> None:
        readers[where, name] = readers.get((where, name), False) or at_start

    for where, template in _pod_specs(docs):
        volumes = {
            v["name"]: v["configMap"]["name"] for v in template["spec"].get("volumes", []) if "configMap" in v
        }
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    read(where, source["configMapRef"]["name"], True)
            for variable in container.get("env", []):
                if "configMapKeyRef" in variable.get("valueFrom", {}):
                    read(where, variable["valueFrom"]["configMapKeyRef"]["name"], True)
            for mount in container.get("volumeMounts", []):
                if mount["name"] in volumes:
                    read(where, volumes[mount["name"]], not _folder_reloaded(docs, container, mount))
    return readers


def _checksums_copied() -> dict[str, dict[str, str]]:
    """ConfigMap -> {pod template "Kind/name": annotation} for each annotation of a ConfigMap that the base's
    kustomize replacements copy onto pod templates (the checksum of a ConfigMap that keeps its name)."""
    copied: dict[str, dict[str, str]] = {}
    for replacement in kustomization(K8S_BASE).get("replacements", []):
        source = replacement["source"]
        _, _, key = source["fieldPath"].partition("metadata.annotations.")
        if source.get("kind") != "ConfigMap" or not key:
            continue
        for target in replacement["targets"]:
            if CHECKSUM_PATH + key in target["fieldPaths"]:
                pod = f"{target['select']['kind']}/{target['select']['name']}"
                copied.setdefault(source["name"], {})[pod] = key
    return copied


def test_config_maps_read_at_start_roll_their_pods_and_watched_ones_do_not(deployed: list[dict]) -> None:
    """Each ConfigMap a pod reads at start is either generated with the hash of its content in its name (the
    references follow it) or carries the checksum of its data, copied onto the template of each such pod; one
    that its pods only hot-reload keeps its name and touches no template."""
    generators = {g["name"]: g for g in kustomization(K8S_BASE).get("configMapGenerator", [])}
    hashed = {name for name, g in generators.items() if not g.get("options", {}).get("disableNameSuffixHash")}
    copied = _checksums_copied()
    config_maps = _of_kind(deployed, "ConfigMap")
    readers = config_map_readers(deployed)
    for name in {name for _, name in readers}:
        at_start = {where for (where, n), start in readers.items() if n == name and start}
        watching = {where for (where, n), start in readers.items() if n == name and not start}
        if name in hashed:
            assert not watching, (
                f"ConfigMap {name}: its hashed name restarts {sorted(watching)}, which reload it"
            )
            continue
        assert not watching & copied.get(name, {}).keys(), (
            f"ConfigMap {name}: a checksum restarts its watchers"
        )
        for where in at_start:
            assert where in copied.get(name, {}), (
                f"{where} reads ConfigMap {name} only at start, and a change to it leaves the pod template as it "
                "is: generate it with a hashed name (configMapGenerator) or copy a checksum of it (replacements)"
            )
            key = copied[name][where]
            annotation = config_maps[name]["metadata"].get("annotations", {}).get(key)
            assert annotation == clickhouse_configmap.checksum(config_maps[name]["data"]), (
                f"ConfigMap {name}: annotation {key} is not the checksum of its data"
            )
    assert readers[("Deployment/mtrank-ranker", "mtrank-experiments")] is False, (
        "the ranker's reload is unseen"
    )


def _replace(base: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the one file under ``base`` that holds it, wherever the layout keeps it."""
    (path,) = [p for p in base.rglob("*") if p.is_file() and old in p.read_text()]
    path.write_text(path.read_text().replace(old, new))


def _ingest_sql_changed(base: Path, scratch: Path) -> None:
    """What `python -m deploy.clickhouse_configmap` writes after a change to deploy/clickhouse/ingest.sql."""
    changed = scratch / "ingest.sql"
    changed.write_text(clickhouse_configmap.SOURCES["ingest.sql"].read_text() + "-- a change\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(clickhouse_configmap.SOURCES, "ingest.sql", changed)
        (base / "configmap-clickhouse.yaml").write_text(clickhouse_configmap.render())


EXPERIMENTS_CHANGE = ("coverage: 1.0", "coverage: 0.5")
CHANGES: dict[str, tuple[Callable[[Path, Path], None], set[str]]] = {
    "runtime": (
        lambda base, _: _replace(base, "kafka-kafka-bootstrap.kafka.svc:9092", "kafka.example:9092"),
        {
            "Deployment/mtrank-ranker",
            "Deployment/mtrank-outcomes",
            "Deployment/mtrank-analytics",
            "StatefulSet/mtrank-clickhouse",
        },
    ),
    "analysis": (
        lambda base, _: _replace(base, "alpha: 0.05", "alpha: 0.01"),
        {"Deployment/mtrank-analytics", "Deployment/mtrank-analytics-warehouse"},
    ),
    "experiments": (lambda base, _: _replace(base, *EXPERIMENTS_CHANGE), set()),
    "clickhouse-init": (_ingest_sql_changed, {"StatefulSet/mtrank-clickhouse"}),
}


def _templates(docs: list[dict]) -> dict[str, dict]:
    return {where: template for where, template in _pod_specs(docs)}


def _config_maps(docs: list[dict]) -> list[dict]:
    return sorted(
        (d["data"] for d in docs if d["kind"] == "ConfigMap"), key=lambda data: sorted(data.items())
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("change", CHANGES)
def test_kustomize_rolls_exactly_the_pods_a_config_change_needs(
    overlay: str, change: str, tmp_path: Path
) -> None:
    """`kubectl kustomize` of a copy of deploy/k8s before and after a change to one config: the pod templates
    that differ (what `kubectl apply -k` rolls) are those of the pods that read it at start, and the change
    reaches a ConfigMap either way."""
    edit, rolled = CHANGES[change]
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    before = kustomize(copy, overlay)
    edit(copy / "base", tmp_path)
    after = kustomize(copy, overlay)
    assert _config_maps(after) != _config_maps(before), f"{change}: no ConfigMap changed"
    old, new = _templates(before), _templates(after)
    assert old.keys() == new.keys()
    assert {where for where in old if old[where] != new[where]} == rolled, f"{overlay}: {change}"


def _kubelet_writes(folder: Path, files: dict[str, str], generation: int) -> None:
    """Update a ConfigMap folder mount as kubelet's atomic writer does: the files in a new hidden folder, `..data`
    switched to it by one rename, each file a link through `..data`, the previous folder removed."""
    current = folder / f"..generation-{generation}"
    current.mkdir()
    for name, text in files.items():
        (current / name).write_text(text)
    (folder / "..data_tmp").symlink_to(current.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    shutil.rmtree(folder / f"..generation-{generation - 1}", ignore_errors=True)


def test_the_ranker_reloads_experiments_that_kubelet_updates_in_its_folder_mount(tmp_path: Path) -> None:
    """Why mtrank-experiments keeps its name: the ranker's watcher sees kubelet's update of the mounted file."""
    from experiment_router.reload import ConfigWatcher

    text = _of_kind(load_k8s(), "ConfigMap")["mtrank-experiments"]["data"]["experiments.yaml"]
    _kubelet_writes(tmp_path, {"experiments.yaml": text}, 1)
    watcher = ConfigWatcher(tmp_path / "experiments.yaml", settle_s=0)
    assert {e.coverage for e in watcher.current.config.experiments} == {1.0}
    _kubelet_writes(tmp_path, {"experiments.yaml": text.replace(*EXPERIMENTS_CHANGE)}, 2)
    assert watcher.check_now(), "the ranker kept the experiments kubelet replaced"
    assert {e.coverage for e in watcher.current.config.experiments} == {0.5}


def test_configmap_cli_helps_and_checks_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` ran the generator (it rewrote the ConfigMap); `--check` lets CI see a stale copy."""
    target = tmp_path / "deploy" / "configmap-clickhouse.yaml"
    target.parent.mkdir()
    monkeypatch.setattr(clickhouse_configmap, "ROOT", tmp_path)
    monkeypatch.setattr(clickhouse_configmap, "TARGET", target)
    monkeypatch.setattr(
        clickhouse_configmap, "SOURCES", {"ingest.sql": clickhouse_configmap.SOURCES["ingest.sql"]}
    )
    with pytest.raises(SystemExit) as exit_:
        clickhouse_configmap.main(["--help"])
    assert exit_.value.code == 0 and "--check" in capsys.readouterr().out
    assert not target.exists()
    assert clickhouse_configmap.main(["--check"]) == 1 and not target.exists()
    assert clickhouse_configmap.main([]) == 0 and target.read_text() == clickhouse_configmap.render()
    assert clickhouse_configmap.main(["--check"]) == 0
    target.write_text(target.read_text() + "# edited by hand\n")
    assert clickhouse_configmap.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
