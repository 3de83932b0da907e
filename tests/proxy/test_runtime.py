"""A session's runtime: what is built once per configuration, and what a reload reuses."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import ssl
from pathlib import Path

from prometheus_client import CollectorRegistry
from support.e2e import E2EMaterial

from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.runtime import SessionRuntime, build_runtime
from fixproxy.sim.certs import generate_certificates


def _context(runtime: SessionRuntime) -> ssl.SSLContext:
    """The TLS context the runtime's connector opens connections with."""
    connect = runtime.connect
    assert isinstance(connect, functools.partial)
    (context,) = [arg for arg in connect.args if isinstance(arg, ssl.SSLContext)]
    return context


def test_a_rebuilt_runtime_reuses_its_tls_context_until_the_ca_file_changes(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(e2e_material.certs.write(tmp_path / "certs").ca_cert, ca_file)
    session = e2e_material.session_config(name="rt")
    session = dataclasses.replace(session, tls=dataclasses.replace(session.tls, ca_file=ca_file))
    metrics = Metrics(CollectorRegistry())

    first = _context(build_runtime(session, metrics))
    assert _context(build_runtime(session, metrics)) is first  # a reload, nothing changed
    ca_file.write_bytes(generate_certificates("localhost").ca_cert_pem)
    assert _context(build_runtime(session, metrics)) is not first  # new CA bytes: rebuilt
