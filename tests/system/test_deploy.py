"""The service files shipped in conf/: the systemd unit and the Kubernetes sidecar example.

The unit goes through ``systemd-analyze verify`` and the manifest through Kubernetes' own
schemas (the ``kubernetes-validate`` package bundles them, so nothing is downloaded). Either
tool may be missing on a developer's machine, where those tests skip; CI sets
``FIXPROXY_REQUIRE_DEPLOY_CHECKS=1`` and installs both, so there a missing tool fails.
Beyond the schemas, the tests hold what the files promise an operator: the hardening of the
unit, and a pod whose fixproxy configuration loads, whose engine is pointed at fixproxy's
listener, and whose probe and scrape annotations name fixproxy's metrics port.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from fixproxy.config.loader import load_config

ROOT: Final = Path(__file__).resolve().parents[2]
UNIT: Final = ROOT / "conf" / "systemd" / "fixproxy.service"
MANIFEST: Final = ROOT / "conf" / "kubernetes" / "fixproxy-sidecar.yaml"
KUBERNETES_VERSION: Final = "1.30.0"
"""The oldest Kubernetes release the example is validated against (strict: unknown fields
are errors)."""


def _required(what: str, reason: str) -> None:
    """Skip for lack of ``what``, except where CI requires the deployment checks."""
    if os.environ.get("FIXPROXY_REQUIRE_DEPLOY_CHECKS"):
        pytest.fail(f"{what} is required here ({reason})")
    pytest.skip(f"{what} is not available: {reason}")


# --- systemd ------------------------------------------------------------------------------


def _unit_settings(text: str) -> dict[str, list[str]]:
    """``key -> values`` of a unit file (keys may repeat, as SystemCallFilter does)."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_runs_fixproxy_hardened_as_its_own_user() -> None:
    settings = _unit_settings(UNIT.read_text(encoding="utf-8"))
    expected = {
        "User": "fixproxy", "Group": "fixproxy", "ProtectSystem": "strict",
        "NoNewPrivileges": "yes", "StateDirectory": "fixproxy", "LogsDirectory": "fixproxy",
        "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    (exec_start,) = settings["ExecStart"]
    assert exec_start.split()[1:] == ["run", "--config", "/etc/fixproxy/fixproxy.toml"]
    assert settings["StateDirectoryMode"] == ["0700"]


def _verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit_text``, with ExecStart pointed at a stand-in
    executable (verify checks that the program exists; fixproxy is not in /opt here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        _required("systemd-analyze", "apt-get install systemd")
    assert analyze is not None
    stand_in = directory / "fixproxy"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = directory / "fixproxy.service"
    unit.write_text(unit_text.replace("/opt/fixproxy/bin/fixproxy", str(stand_in)))
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert "/opt/fixproxy/bin/fixproxy run" in text
    done = _verify(text, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fixproxy.service" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_systemd_analyze_would_report_a_mistake(tmp_path: Path) -> None:
    # The check above can fail: a misspelt setting is reported for the unit's file.
    text = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=", "ProtectSystm=")
    done = _verify(text, tmp_path)
    assert "ProtectSystm" in done.stdout + done.stderr


# --- Kubernetes ---------------------------------------------------------------------------


def _documents() -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        _required("PyYAML", "pip install '.[test]'")
    documents = list(yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")))
    assert all(isinstance(document, dict) for document in documents)
    return documents


def _validate(document: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _required("kubernetes-validate", "pip install '.[test]'")
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _validation_error() -> type[Exception]:
    try:
        from kubernetes_validate.utils import ValidationError
    except ImportError:
        _required("kubernetes-validate", "pip install '.[test]'")
    return ValidationError  # type: ignore[no-any-return]  # the package has no types


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [document for document in documents if document["kind"] == kind]
    return found


def test_the_manifest_is_valid_kubernetes() -> None:
    documents = _documents()
    assert sorted(document["kind"] for document in documents) == ["Deployment", "Secret"]
    for document in documents:
        _validate(document)


def test_the_schema_check_would_report_a_mistake() -> None:
    error = _validation_error()
    deployment = copy.deepcopy(_by_kind(_documents(), "Deployment"))
    del deployment["spec"]["template"]["spec"]["containers"][1]["image"]
    deployment["spec"]["template"]["spec"]["containers"][1]["readinesProbe"] = {}
    with pytest.raises(error):
        _validate(deployment)


def test_the_pod_is_an_engine_beside_fixproxy_configured_from_the_secret(
        tmp_path: Path) -> None:
    documents = _documents()
    secret = _by_kind(documents, "Secret")
    config_file = tmp_path / "fixproxy.toml"
    config_file.write_text(secret["stringData"]["fixproxy.toml"])
    config = load_config(config_file, check_files=False)
    keys = {session.private_key.relative_to(tmp_path).as_posix() for session in config.sessions}
    assert keys == {f"keys/{name}" for name in secret["stringData"] if name.endswith(".key")}
    assert config.metrics.listen is not None
    metrics_port = config.metrics.listen[1]

    deployment = _by_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # one FIX connection per API key
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    pod = template["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    assert set(containers) == {"engine", "fixproxy"}
    fixproxy = containers["fixproxy"]
    assert fixproxy["args"][:2] == ["run", "--config"]
    (port,) = fixproxy["ports"]
    assert port["containerPort"] == metrics_port
    assert fixproxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert fixproxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    engine_env = {item["name"]: item["value"] for item in containers["engine"]["env"]}
    (session,) = config.sessions
    assert (engine_env["FIX_HOST"], int(engine_env["FIX_PORT"])) == session.listen
    # The configuration and keys come from the Secret, copied 0600 by the init container to
    # where fixproxy's --config points.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["secret"]["secret"]["secretName"] == secret["metadata"]["name"]
    (init,) = pod["initContainers"]
    assert "install -m 0600" in init["args"][0]
    mounts = {mount["name"]: mount["mountPath"] for mount in fixproxy["volumeMounts"]}
    assert Path(fixproxy["args"][2]).parent == Path(mounts["files"])
    assert config.proxy.state_dir is not None
    assert config.proxy.state_dir.is_relative_to(mounts["state"])
