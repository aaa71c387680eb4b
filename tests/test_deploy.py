"""The deployment files, checked as far as this machine can without a container runtime or a
cluster: Kubernetes manifests against the Kubernetes schemas (strict, offline), the compose
file's structure, every ``SCREENER_*`` variable a real setting, every command line a valid
``screener`` command line, the bundled configurations loadable, and none of them shipping a
DICOM listener open to any caller (TLS on with an allow-list placeholder, or loopback only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support import REPO

from screener.cli import build_parser
from screener.config import Settings, load_settings
from screener.ingest.exposure import is_loopback, listener_exposure

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
    """Each Kubernetes manifest validates strictly and its containers use only real commands, flags
    and settings."""
    docs = _documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        for container in _containers(doc):
            _check_args(list(container["args"]))
            _check_env([e["name"] for e in container.get("env", [])])


def test_the_validator_would_catch_a_typo() -> None:
    """The strict Kubernetes validation fails on a misspelt field, so the manifest test can fail."""
    doc = _documents(DEPLOY / "kubernetes" / "worker.yaml")[0]
    doc["spec"]["replcas"] = doc["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_configmaps_screener_toml_loads(tmp_path: Path) -> None:
    """The ConfigMap's screener.toml loads as settings with the spool, schedule, watcher and cookie
    values the manifests rely on."""
    (config_map,) = [
        d for d in _documents(DEPLOY / "kubernetes" / "config.yaml") if d["kind"] == "ConfigMap"
    ]
    toml = tmp_path / "screener.toml"
    toml.write_text(config_map["data"]["screener.toml"])
    settings = load_settings(toml, environ={})
    assert settings.storage.spool_dir == "/var/lib/screener/spool"
    assert settings.rescan.schedule == "" and not settings.watch.enabled
    assert settings.web.secure_cookies  # the worklist is reached over HTTPS only


def test_the_compose_file_is_consistent() -> None:
    """compose.yaml has its services, each dependency and volume is declared, and screener services
    use real flags and settings."""
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
    """The Containerfile sets only real SCREENER_ settings and runs the installed wheel's screener."""
    text = (DEPLOY / "Containerfile").read_text()
    _check_env(re.findall(r"\b(SCREENER_[A-Z_]+)=", text))
    assert 'ENTRYPOINT ["screener"]' in text and "COPY dist/screener-*.whl" in text


def _configmap_settings(tmp_path: Path) -> Settings:
    (config_map,) = [
        d for d in _documents(DEPLOY / "kubernetes" / "config.yaml") if d["kind"] == "ConfigMap"
    ]
    toml = tmp_path / "screener.toml"
    toml.write_text(config_map["data"]["screener.toml"])
    return load_settings(toml, environ={})


def test_the_kubernetes_listener_is_tls_only_with_an_allow_list(tmp_path: Path) -> None:
    """The ConfigMap turns listener TLS on with an allow-list placeholder; the listener pod
    mounts the certificate files from a Secret where [tls] names them and serves on the port
    the configuration gives; the Service admits only listed source ranges and a
    NetworkPolicy limits the DICOM and metrics ports."""
    settings = _configmap_settings(tmp_path)
    assert settings.listener.tls and settings.listener.require_called_aet
    assert settings.listener.allowed_calling_aets == ["PACS_AE_TITLE"]
    assert not listener_exposure(settings.listener, settings.tls).open
    docs = {d["kind"]: d for d in _documents(DEPLOY / "kubernetes" / "listener.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in (settings.tls.certificate, settings.tls.private_key, settings.tls.ca_certificates):
        assert mounts.get(str(Path(path).parent)) in secrets, path  # files from the Secret
    assert secrets == {"tls": "screener-tls"}
    (dicom,) = [p for p in container["ports"] if p["name"] == "dicom"]
    assert dicom["containerPort"] == settings.listener.port
    service = docs["Service"]["spec"]
    if service.get("type") == "LoadBalancer":
        assert service["loadBalancerSourceRanges"], "a LoadBalancer open to every address"
    assert "0.0.0.0/0" not in service.get("loadBalancerSourceRanges", [])
    policy = docs["NetworkPolicy"]["spec"]
    assert (
        policy["podSelector"]["matchLabels"]
        == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    guarded = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert guarded == {"dicom", "metrics"}
    assert all(rule.get("from") for rule in policy["ingress"])  # no rule admits everyone


def test_the_compose_listener_is_published_on_loopback_unless_tls_is_on() -> None:
    """screener-front accepts only listed calling AE titles, and its DICOM port is published on
    all interfaces only with listener TLS on."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    front = compose["services"]["screener-front"]
    settings = load_settings(REPO / "screener.toml", environ=dict(front["environment"]))
    assert settings.listener.allowed_calling_aets == ["ORTHANC"]  # Orthanc, the PACS here
    assert not listener_exposure(settings.listener, settings.tls).open
    for published in front["ports"]:
        parts = str(published).split(":")
        if parts[-1] == str(settings.listener.port) and not settings.listener.tls:
            assert len(parts) == 3 and is_loopback(parts[0]), published


def test_the_packaged_configuration_is_tls_only_with_an_allow_list() -> None:
    """deploy/screener.toml (systemd) turns listener TLS on with certificates under
    /etc/screener/tls, an allow-list placeholder and metrics on loopback."""
    settings = load_settings(DEPLOY / "screener.toml", environ={})
    assert settings.listener.tls and settings.listener.allowed_calling_aets == ["PACS_AE_TITLE"]
    assert not listener_exposure(settings.listener, settings.tls).open
    for path in (settings.tls.certificate, settings.tls.private_key, settings.tls.ca_certificates):
        assert path.startswith("/etc/screener/tls/"), path
    assert is_loopback(settings.metrics.host)
    assert settings.web.secure_cookies and is_loopback(settings.web.host)


def test_the_exposure_checks_would_catch_an_open_deployment(tmp_path: Path) -> None:
    """The ConfigMap without its allow-list and TLS lines is judged open (the checks above can
    fail)."""
    (config_map,) = [
        d for d in _documents(DEPLOY / "kubernetes" / "config.yaml") if d["kind"] == "ConfigMap"
    ]
    text = "\n".join(
        line
        for line in config_map["data"]["screener.toml"].splitlines()
        if not line.strip().startswith(("tls = true", "allowed_calling_aets"))
    )
    toml = tmp_path / "screener.toml"
    toml.write_text(text)
    settings = load_settings(toml, environ={})
    assert listener_exposure(settings.listener, settings.tls).open


def test_every_deployment_starts_silent(tmp_path: Path) -> None:
    """The systemd configuration, the Kubernetes ConfigMap and every screener service of the
    compose file start in shadow (nothing sent to PACS before a go-live); the development
    screener.toml stays live."""
    assert load_settings(DEPLOY / "screener.toml", environ={}).site.mode == "shadow"
    assert _configmap_settings(tmp_path).site.mode == "shadow"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    screeners = {
        name: service
        for name, service in compose["services"].items()
        if "screener" in str(service.get("image", ""))
    }
    assert {"screener-front", "screener-worker"} <= set(screeners)
    for name, service in screeners.items():
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        settings = load_settings(REPO / "screener.toml", environ=env)
        assert settings.site.mode == "shadow", name
    assert load_settings(REPO / "screener.toml", environ={}).site.mode == "live"
