"""The deployment files, checked as far as this machine can without a container runtime or a
cluster: Kubernetes manifests against the Kubernetes schemas (strict, offline), the compose
file's structure, every ``SCREENER_*`` variable a real setting, every command line a valid
``screener`` command line, the bundled configurations loadable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support import REPO

from screener.cli import build_parser
from screener.config import load_settings

DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return list(pod.get("containers", []))


def _check_env(names: list[str]) -> None:
    """Every SCREENER_<SECTION>_<KEY> is a setting (a typo would be silently ignored)."""
    env = {n: "" for n in names if n.startswith("SCREENER_") and n != "SCREENER_CONFIG"}
    known = {
        f"SCREENER_{section}_{key}".upper()
        for section, values in load_settings(REPO / "screener.toml", environ={}).__dict__.items()
        if hasattr(values, "__dataclass_fields__")
        for key in values.__dataclass_fields__
    }
    assert set(env) <= known, sorted(set(env) - known)


def _check_args(args: list[str]) -> None:
    parsed = build_parser().parse_args(args)  # SystemExit on an unknown command or flag
    assert parsed.command == args[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path: Path) -> None:
    docs = _documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        for container in _containers(doc):
            _check_args(list(container["args"]))
            _check_env([e["name"] for e in container.get("env", [])])


def test_the_validator_would_catch_a_typo() -> None:
    doc = _documents(DEPLOY / "kubernetes" / "worker.yaml")[0]
    doc["spec"]["replcas"] = doc["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_configmaps_screener_toml_loads(tmp_path: Path) -> None:
    (config_map,) = [
        d for d in _documents(DEPLOY / "kubernetes" / "config.yaml") if d["kind"] == "ConfigMap"
    ]
    toml = tmp_path / "screener.toml"
    toml.write_text(config_map["data"]["screener.toml"])
    settings = load_settings(toml, environ={})
    assert settings.storage.spool_dir == "/var/lib/screener/spool"
    assert settings.rescan.schedule == "" and not settings.watch.enabled


def test_the_compose_file_is_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services, volumes = compose["services"], set(compose.get("volumes", {}))
    assert {"postgres", "orthanc", "screener-migrate", "screener-front", "screener-worker"} <= set(
        services
    )
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in volumes, (name, source)
        if name.startswith("screener"):
            _check_args(list(service["command"]))
            _check_env(list(service["environment"]))
    roles = {" ".join(services[s]["command"]) for s in ("screener-front", "screener-worker")}
    assert roles == {"serve --roles listener,exporter", "serve --roles worker"}


def test_the_containerfile_sets_only_real_settings() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    _check_env(re.findall(r"\b(SCREENER_[A-Z_]+)=", text))
    assert 'ENTRYPOINT ["screener"]' in text and "COPY dist/screener-*.whl" in text
