"""The local stack as real processes on loopback: OPA, the sidecar, Envoy, the demo upstream.

Used by ``./taskw up``, ``./taskw demo`` and the e2e tests, so what the tests check is what
a user runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

import requests
import yaml

from sidecar.dev.envoy_config import REPO_ROOT, render_envoy_config
from sidecar.dev.tools import find_tool
from sidecar.dev.trust_domain import DEFAULT_AUDIENCE, DevTrustDomain

DEFAULT_BUNDLE = REPO_ROOT / "rego"
DEFAULT_DECISION_PATH = "agent/authz/decision"


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """Fixed defaults for ``./taskw up``; ``Ports.free()`` for tests."""

    egress: int = 10000
    ingress: int = 10443
    envoy_admin: int = 9901
    sidecar: int = 9191
    sidecar_admin: int = 9192
    opa: int = 8181
    upstream: int = 18080

    @classmethod
    def free(cls) -> Ports:
        sockets = [socket.socket() for _ in fields(cls)]
        try:
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()

    def check_available(self) -> None:
        for field in fields(self):
            port = getattr(self, field.name)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise StackError(f"port {port} ({field.name}) is in use: is another stack running?")


class Stack:
    """Start with ``with Stack(workdir) as stack:``; every process stops on exit."""

    def __init__(
        self,
        workdir: Path,
        ports: Ports | None = None,
        bundle: Path = DEFAULT_BUNDLE,
        decision_path: str = DEFAULT_DECISION_PATH,
        max_body_bytes: int = 65_536,
        sidecar_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.ports = ports or Ports()
        self.bundle = bundle.resolve()
        self.decision_path = decision_path
        self.max_body_bytes = max_body_bytes
        self.sidecar_env = sidecar_env or {}
        self.logs = self.workdir / "logs"
        self.trust_domain = DevTrustDomain(self.workdir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- URLs -----------------------------------------------------------------------------
    @property
    def egress_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.egress}"

    @property
    def ingress_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.ingress}"

    @property
    def sidecar_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sidecar_admin}"

    @property
    def opa_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.opa}"

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.ports.check_available()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.trust_domain.ensure()
        self.start_opa()
        self._spawn(
            "upstream",
            [
                sys.executable,
                "-m",
                "sidecar",
                "dev",
                "upstream",
                "--port",
                str(self.ports.upstream),
            ],
        )
        self.start_sidecar()
        envoy_config = self._write_envoy_config()
        self._spawn(
            "envoy",
            [
                find_tool("envoy"),
                "-c",
                str(envoy_config),
                "--log-level",
                "warning",
                "--disable-hot-restart",
                "--use-dynamic-base-id",
            ],
        )
        self._wait_http("upstream", f"http://127.0.0.1:{self.ports.upstream}/healthz")
        self._wait_http("envoy", f"http://127.0.0.1:{self.ports.envoy_admin}/ready")
        self._wait_http("sidecar", f"{self.sidecar_admin_url}/readyz")

    def start_opa(self) -> None:
        self._spawn(
            "opa",
            [
                find_tool("opa"),
                "run",
                "--server",
                "--addr",
                f"127.0.0.1:{self.ports.opa}",
                "--bundle",
                str(self.bundle),
                "--ignore",
                "*_test.rego",
                "--set",
                "decision_logs.console=true",
                "--log-format",
                "json",
            ],
        )
        self._wait_http("opa", f"{self.opa_url}/health?bundles")

    def stop_opa(self, sig: int = signal.SIGKILL) -> None:
        self._stop("opa", sig)

    def start_sidecar(self) -> None:
        config = self.workdir / "sidecar.yaml"
        config.write_text(yaml.safe_dump(self.sidecar_config(), sort_keys=False))
        env = {**os.environ, **self.sidecar_env, "AUTHZ_CONFIG": str(config)}
        self._spawn("sidecar", [sys.executable, "-m", "sidecar", "serve"], env=env)
        self._wait_http("sidecar", f"{self.sidecar_admin_url}/healthz")

    def stop_sidecar(self) -> None:
        self._stop("sidecar", signal.SIGTERM)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._stop(name, signal.SIGTERM)

    def sidecar_config(self) -> dict[str, object]:
        td = self.trust_domain
        return {
            "listen": {"host": "127.0.0.1", "port": self.ports.sidecar, "path_prefix": "/authz"},
            "admin": {"host": "127.0.0.1", "port": self.ports.sidecar_admin},
            "opa": {"url": self.opa_url, "decision_path": self.decision_path},
            "identity": {
                "sources": ["xfcc", "jwt_svid"],
                "trust_domains": [td.name],
                "xfcc": {"trusted_secret_file": str(td.xfcc_secret)},
                "jwt_svid": {
                    "audiences": [DEFAULT_AUDIENCE],
                    "bundle_files": {td.name: str(td.jwt_bundle)},
                },
            },
        }

    def run_until_interrupted(self) -> None:
        """Block until Ctrl-C or SIGTERM; a process that dies ends the stack with its log."""
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
        try:
            while True:
                time.sleep(1)
                for name, process in list(self.processes.items()):
                    if process.poll() is not None:
                        raise StackError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
        except KeyboardInterrupt:
            print("\nstopping", flush=True)

    def banner(self) -> str:
        p = self.ports
        return "\n".join(
            [
                "authz-sidecar local stack is up (Ctrl-C stops it)",
                f"  Envoy egress        {self.egress_url}   (agents send a JWT-SVID, audience {DEFAULT_AUDIENCE})",
                f"  Envoy mTLS ingress  {self.ingress_url}  (agents present an X.509-SVID)",
                f"  Envoy admin         http://127.0.0.1:{p.envoy_admin}",
                f"  sidecar             http://127.0.0.1:{p.sidecar}/authz",
                f"  sidecar admin       {self.sidecar_admin_url}  (/healthz /readyz /metrics)",
                f"  OPA                 {self.opa_url}  bundle {self.bundle}, decision {self.decision_path}",
                f"  demo upstream       http://127.0.0.1:{p.upstream}",
                f"  logs                {self.logs}",
                "Try:",
                "  TOKEN=$(.venv/bin/authz-sidecar dev mint-jwt --spiffe-id spiffe://demo.local/agent/reader)",
                f'  curl -i -H "Authorization: Bearer $TOKEN" {self.egress_url}/api/docs/handbook',
            ]
        )

    # -- internals ------------------------------------------------------------------------
    def _write_envoy_config(self) -> Path:
        td = self.trust_domain
        server = td.mint_x509(f"spiffe://{td.name}/envoy/ingress", self.workdir / "envoy", ("localhost", "127.0.0.1"))
        rendered = render_envoy_config(
            {
                "ENVOY_ADMIN_PORT": self.ports.envoy_admin,
                "EGRESS_PORT": self.ports.egress,
                "INGRESS_PORT": self.ports.ingress,
                "SIDECAR_PORT": self.ports.sidecar,
                "UPSTREAM_PORT": self.ports.upstream,
                "MAX_BODY_BYTES": self.max_body_bytes,
                "SERVER_CERT": server.cert,
                "SERVER_KEY": server.key,
                "TRUST_BUNDLE": server.bundle,
                "TRUST_DOMAIN": td.name,
                "XFCC_SECRET": td.xfcc_secret.read_text().strip(),
            }
        )
        path = self.workdir / "envoy.yaml"
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(rendered)
        return path

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if name in self.processes and self.processes[name].poll() is None:
            raise StackError(f"{name} is already running")
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()

    def _stop(self, name: str, sig: int) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait_http(self, name: str, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise StackError(f"{name} not ready at {url} after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
