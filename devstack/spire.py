"""Real SPIRE for the local stack: a SPIRE server and agent on loopback and unix sockets.

Join-token node attestation, the ``unix`` workload attestor, SQLite and in-memory keys, all
under one directory. The demo agents (and Envoy's ingress identity) are registered by the uid
of the user running the stack, so every process that user starts gets their SVIDs from the
agent's Workload API socket, exactly as a pod gets them through the SPIFFE CSI driver. Only that
user: a process under any other uid that reaches the socket is refused (PermissionDenied, no
identity issued), as the agent container is in Kubernetes, where the entries select the envoy and
authz-sidecar containers by ``k8s:container-name`` (the Helm chart's ClusterSPIFFEIDs; tests/e2e/test_spire.py).

``spire-server`` and ``spire-agent`` come from ``.tools/bin`` (``./taskw spire`` builds them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.envoy_config import REPO_ROOT
from devstack.tools import ToolMissing, find_tool

SPIRE_VERSION = "v1.13.3"  # keep in step with SPIRE_VERSION in ./taskw
TRUST_DOMAIN = "demo.local"
NODE_ID = f"spiffe://{TRUST_DOMAIN}/host/local"
DEMO_IDS = (
    f"spiffe://{TRUST_DOMAIN}/agent/reader",
    f"spiffe://{TRUST_DOMAIN}/agent/writer",
    f"spiffe://{TRUST_DOMAIN}/agent/ops/oncall",
)
ENVOY_ID = f"spiffe://{TRUST_DOMAIN}/envoy/ingress"
AUTHORITY_ID = ("authority_id", "authorityId")  # proto or JSON field name, depending on the CLI version


class SpireError(RuntimeError):
    pass


def spire_binaries() -> tuple[str, str]:
    """``(spire-server, spire-agent)``; :class:`ToolMissing` names how to build them."""
    try:
        return find_tool("spire-server"), find_tool("spire-agent")
    except ToolMissing:
        why = ""
        failed = REPO_ROOT / ".tools" / "bin" / f".spire-{SPIRE_VERSION}.unavailable"
        if failed.exists():  # ./taskw tried and could not build it: say why
            why = f"; the last build attempt said: {' '.join(failed.read_text().split())[:300]}"
        raise ToolMissing(
            "spire-server and spire-agent are not in .tools/bin or on PATH: build them with `./taskw spire` "
            f"(SPIRE {SPIRE_VERSION} from the Go module proxy, see tools/spire/README.md){why}"
        ) from None


@dataclass(frozen=True)
class Authority:
    authority_id: str
    state: str  # active | prepared | old


class Spire:
    """One SPIRE server and one agent in ``root``; ``start()`` / ``stop()`` or ``with``."""

    def __init__(self, root: Path, server_port: int, trust_domain: str = TRUST_DOMAIN) -> None:
        self.root = root.resolve()
        self.server_port = server_port
        self.trust_domain = trust_domain
        self.server_bin, self.agent_bin = spire_binaries()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths ----------------------------------------------------------------------------
    @property
    def server_socket(self) -> Path:
        return self.root / "server" / "api.sock"

    @property
    def workload_socket(self) -> Path:
        return self.root / "agent" / "workload.sock"

    @property
    def workload_api(self) -> str:
        """The value for ``SPIFFE_ENDPOINT_SOCKET``."""
        return f"unix://{self.workload_socket}"

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Spire:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        for sub in ("server/data", "agent/data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Stale sockets from an earlier run would make the health checks lie.
        for stale in (self.server_socket, self.workload_socket):
            stale.unlink(missing_ok=True)
        server_conf = self.root / "server.conf"
        server_conf.write_text(self._server_conf())
        self._spawn("spire-server", [self.server_bin, "run", "-config", str(server_conf)])
        self._wait("spire-server", [self.server_bin, "healthcheck", "-socketPath", str(self.server_socket)])
        bootstrap = self.root / "bootstrap.crt"
        bootstrap.write_text(self.server("bundle show", "-format", "pem"))
        token = self._join_token()
        agent_conf = self.root / "agent.conf"
        agent_conf.write_text(self._agent_conf(bootstrap))
        self._spawn("spire-agent", [self.agent_bin, "run", "-config", str(agent_conf), "-joinToken", token])
        self._wait("spire-agent", [self.agent_bin, "healthcheck", "-socketPath", str(self.workload_socket)])

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    # -- registration and authorities -----------------------------------------------------
    def register(self, spiffe_id: str, uid: int | None = None, x509_ttl: int = 3600, jwt_ttl: int = 300) -> None:
        """An entry for ``spiffe_id`` under this node, selected by ``unix:uid`` (default: ours)."""
        self.server(
            "entry create",
            "-parentID",
            NODE_ID,
            "-spiffeID",
            spiffe_id,
            "-selector",
            f"unix:uid:{os.getuid() if uid is None else uid}",
            "-x509SVIDTTL",
            str(x509_ttl),
            "-jwtSVIDTTL",
            str(jwt_ttl),
        )

    def register_demo(self) -> None:
        for spiffe_id in (*DEMO_IDS, ENVOY_ID):
            self.register(spiffe_id)

    def jwt_authorities(self) -> list[Authority]:
        shown = json.loads(self.server("localauthority jwt show", "-output", "json"))
        return [
            Authority(str(_find_key(item, AUTHORITY_ID)), state.removesuffix("_authority"))
            for state, item in shown.items()
            if isinstance(item, dict) and _find_key(item, AUTHORITY_ID)
        ]

    def rotate_jwt_authority(self) -> tuple[str, str]:
        """Prepare and activate a new JWT signing key; ``(old, new)`` authority ids. The old key
        stays in the bundle (tokens it signed stay valid) until :meth:`revoke_jwt_authority`."""
        old = next(a.authority_id for a in self.jwt_authorities() if a.state == "active")
        prepared = json.loads(self.server("localauthority jwt prepare", "-output", "json"))
        new = str(_find_key(prepared, AUTHORITY_ID))
        self.server("localauthority jwt activate", "-authorityID", new)
        return old, new

    def revoke_jwt_authority(self, authority_id: str) -> None:
        """Taint then revoke: the key leaves the bundle, tokens it signed stop verifying."""
        self.server("localauthority jwt taint", "-authorityID", authority_id)
        self.server("localauthority jwt revoke", "-authorityID", authority_id)

    def server(self, command: str, *flags: str) -> str:
        """Run ``spire-server <command> <flags>`` (e.g. ``"entry create"``) against this server."""
        argv = [self.server_bin, *command.split(), "-socketPath", str(self.server_socket), *flags]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SpireError(f"spire-server {command} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    # -- internals ------------------------------------------------------------------------
    def _join_token(self) -> str:
        out = self.server("token generate", "-spiffeID", NODE_ID, "-ttl", "600")
        match = re.search(r"Token:\s*(\S+)", out)
        if not match:
            raise SpireError(f"no join token in: {out!r}")
        return match.group(1)

    def _server_conf(self) -> str:
        data = self.root / "server" / "data"
        return f"""server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.server_port}"
    socket_path = "{self.server_socket}"
    trust_domain = "{self.trust_domain}"
    data_dir = "{data}"
    log_level = "INFO"
    log_format = "json"
    ca_key_type = "ec-p256"
    jwt_key_type = "ec-p256"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data / "datastore.sqlite3"}"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"""

    def _agent_conf(self, bootstrap: Path) -> str:
        return f"""agent {{
    data_dir = "{self.root / "agent" / "data"}"
    log_level = "INFO"
    log_format = "json"
    server_address = "127.0.0.1"
    server_port = "{self.server_port}"
    socket_path = "{self.workload_socket}"
    trust_bundle_path = "{bootstrap}"
    trust_domain = "{self.trust_domain}"
    experimental {{
        # Pick up new entries and bundle changes within a second, not the default 5 s.
        sync_interval = "1s"
    }}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _wait(self, name: str, probe: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise SpireError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.3)
        raise SpireError(f"{name} not healthy after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _find_key(document: Any, keys: tuple[str, ...]) -> Any:
    """The first value of any of ``keys`` anywhere in a JSON document (CLI output shapes vary)."""
    if isinstance(document, dict):
        for key in keys:
            if key in document:
                return document[key]
        for value in document.values():
            found = _find_key(value, keys)
            if found is not None:
                return found
    if isinstance(document, list):
        for value in document:
            found = _find_key(value, keys)
            if found is not None:
                return found
    return None
