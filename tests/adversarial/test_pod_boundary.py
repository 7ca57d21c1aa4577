"""The pod boundary, attacked as the agent: another, unprivileged user on the same loopback.

In a pod every container shares the network namespace, so the agent can send bytes to every TCP
port of the trio. What keeps it out is the layout, which the local stack reproduces: the check
endpoint, OPA and Envoy's admin listen on unix sockets in a run directory only the trio's user
can open (an emptyDir mounted into Envoy, the sidecar and OPA only); secrets are files only that
user can read; the bundle service and decision-log receiver demand OPA's bearer token. The agent
reaches Envoy's egress listener, the agent API (tasks, approvals, JWKS), the read-only health
and metrics port, and nothing else.

The attacks run in a separate process as ``nobody`` (``setpriv``), with the stack's directory
made traversable so that only the layout's own permissions stop them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Ports, Stack
from tests.adversarial.conftest import READER

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

AGENT_UID = 65534  # nobody: the agent container's user

# Runs as the agent: standard library only, one JSON answer per probe.
ATTACKS = r"""
import http.client, json, socket, sys

def tcp(port, method, path, headers, body):
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request(method, path, body=body.encode() if body else None, headers=headers)
        response = connection.getresponse()
        return {"status": response.status, "body": response.read(300).decode("utf-8", "replace")}
    except Exception as exc:
        return {"error": type(exc).__name__}

def unix(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return {"status": "connected", "body": sock.recv(200).decode("latin-1")}
    except Exception as exc:
        return {"error": type(exc).__name__}
    finally:
        sock.close()

def read(path):
    try:
        with open(path, "rb") as f:
            return {"status": "read", "bytes": len(f.read())}
    except Exception as exc:
        return {"error": type(exc).__name__}

spec = json.load(sys.stdin)
out = {}
for name, (port, method, path, headers, body) in spec["tcp"].items():
    out[name] = tcp(port, method, path, headers, body)
for path in spec["unix"]:
    out[path] = unix(path)
for path in spec["files"]:
    out[path] = read(path)
print(json.dumps(out))
"""


def _as_agent(spec: dict[str, Any]) -> dict[str, Any]:
    python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    argv = ["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups", python, "-c", ATTACKS]
    done = subprocess.run(argv, input=json.dumps(spec), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def pod(opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("capability: attacking as another user needs root and setpriv (util-linux)")
    workdir = Path(tempfile.mkdtemp(prefix="authz-pod-"))
    workdir.chmod(0o755)  # traversable by the agent: only the layout's own permissions may stop it
    try:
        with Stack(workdir, Ports.free(), bundle_service=True, decision_log_service=True) as stack:
            yield stack
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _listening_ports(stack: Stack) -> set[int]:
    """Every TCP port a process of the stack listens on (from /proc)."""
    inodes: set[str] = set()
    for process in stack.processes.values():
        fd_dir = Path(f"/proc/{process.pid}/fd")
        for fd in fd_dir.iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def attacks(pod: Stack) -> dict[str, Any]:
    p = pod.ports
    token = pod.trust_domain.mint_jwt(READER)
    bearer = {"authorization": f"Bearer {token}"}
    task = json.dumps({"purpose": "research", "scopes": ["docs:read"], "ttl_seconds": 60})
    opa_like = json.dumps({"input": {}})
    spec = {
        "tcp": {
            "egress": (p.egress, "GET", "/api/docs/handbook", bearer, ""),
            "agent-api-task": (p.sidecar, "POST", "/v1/tasks", {**bearer, "content-type": "application/json"}, task),
            "agent-api-check": (p.sidecar, "GET", f"{pod.check_prefix}/api/docs/handbook", bearer, ""),
            "admin-check": (p.sidecar_admin, "GET", f"{pod.check_prefix}/api/docs/handbook", bearer, ""),
            "admin-metrics": (p.sidecar_admin, "GET", "/metrics", {}, ""),
            "bundle": (p.bundle_service, "GET", "/bundles/authz.tar.gz", {}, ""),
            "bundle-guessed-token": (p.bundle_service, "GET", "/bundles/authz.tar.gz", bearer, ""),
            "decision-logs": (p.decision_logs, "POST", "/logs", {"content-type": "application/json"}, "[]"),
            # Where the trio used to listen on TCP, and their defaults: nothing may answer there.
            "opa-tcp": (p.opa, "POST", "/v1/data", {"content-type": "application/json"}, opa_like),
            "opa-default": (8181, "GET", "/v1/data", {}, ""),
            "envoy-admin-tcp": (p.envoy_admin, "POST", "/quitquitquit", {}, ""),
            "envoy-admin-default": (9901, "GET", "/config_dump", {}, ""),
            "sidecar-grpc-tcp": (p.sidecar_grpc, "GET", "/", {}, ""),
        },
        "unix": [str(path) for path in pod.run_dir.iterdir() if path.is_socket()],
        "files": [
            str(path)
            for path in pod.workdir.rglob("*")
            if path.is_file()
            and (path.suffix in {".key", ".pem"} or path.name in {"xfcc-secret", "service-token"})
            and not path.name.endswith(("bundle.pem", "svid.pem"))  # public certificates
        ],
    }
    return {"spec": spec, "results": _as_agent(spec)}


def test_the_agent_reaches_egress_and_its_api(attacks: dict[str, Any]) -> None:
    results = attacks["results"]
    assert results["egress"]["status"] == 200, results["egress"]
    assert results["agent-api-task"]["status"] == 201, results["agent-api-task"]


@pytest.mark.parametrize("name", ["agent-api-check", "admin-check"])
def test_no_tcp_port_answers_a_check(attacks: dict[str, Any], name: str) -> None:
    """The check endpoint lives only on its socket: the TCP ports know no /authz route."""
    assert attacks["results"][name]["status"] == 404, attacks["results"][name]


def test_metrics_are_read_only(attacks: dict[str, Any]) -> None:
    assert attacks["results"]["admin-metrics"]["status"] == 200


@pytest.mark.parametrize("name", ["bundle", "bundle-guessed-token", "decision-logs"])
def test_opas_services_demand_its_token(attacks: dict[str, Any], name: str) -> None:
    assert attacks["results"][name]["status"] == 401, attacks["results"][name]


@pytest.mark.parametrize(
    "name", ["opa-tcp", "opa-default", "envoy-admin-tcp", "envoy-admin-default", "sidecar-grpc-tcp"]
)
def test_nothing_of_the_trio_listens_on_tcp(attacks: dict[str, Any], name: str) -> None:
    assert attacks["results"][name] == {"error": "ConnectionRefusedError"}, attacks["results"][name]


def test_no_socket_of_the_trio_opens_for_the_agent(pod: Stack, attacks: dict[str, Any]) -> None:
    sockets = attacks["spec"]["unix"]
    expected = {pod.check_socket, pod.opa_socket, pod.envoy_admin_socket}
    assert {str(path) for path in expected} <= set(sockets), "the trio's sockets exist where the layout says"
    for path in sockets:
        assert attacks["results"][path] == {"error": "PermissionError"}, path


def test_no_secret_file_reads_for_the_agent(attacks: dict[str, Any]) -> None:
    files = attacks["spec"]["files"]
    assert any(name.endswith("xfcc-secret") for name in files) and any(name.endswith("ca.key") for name in files)
    for path in files:
        assert attacks["results"][path] == {"error": "PermissionError"}, path


def test_the_stack_listens_on_no_tcp_port_but_the_named_ones(pod: Stack) -> None:
    """A new TCP listener of the trio (OPA or Envoy's admin back on a port) fails here."""
    p = pod.ports
    named = {p.egress, p.ingress, p.sidecar, p.sidecar_admin, p.upstream, p.bundle_service, p.decision_logs}
    assert _listening_ports(pod) <= named, sorted(_listening_ports(pod) - named)
