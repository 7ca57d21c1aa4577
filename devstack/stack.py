"""The local stack as real processes on loopback: OPA, the sidecar, Envoy, the demo upstream.

Used by ``./taskw up``, ``./taskw demo`` and the e2e tests, so what the tests check is what
a user runs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Literal

import requests
import yaml

from devstack import svid_files
from devstack.bundles import BUNDLE_NAME, decision_log_flags, distributed_tracing_flags, opa_config, with_log_mask
from devstack.envoy_config import GRPC_TEMPLATE, REPO_ROOT, TEMPLATE, render_envoy_config
from devstack.oidc import DevOidcIssuer
from devstack.ports import free_ports
from devstack.spire import ENVOY_ID, Spire, SpireError
from devstack.tools import ToolMissing, find_tool
from devstack.trust_domain import DEFAULT_AUDIENCE, DevTrustDomain
from sidecar.keys import generate_key, write_key
from sidecar.policy.bundle import SigningKey, build_bundle, default_revision
from sidecar.services.bundle_server import publish
from sidecar.unix_http import UnixResponse, unix_request

DEFAULT_BUNDLE = REPO_ROOT / "rego"
DEFAULT_DECISION_PATH = "agent/authz/decision"
CHECK_PATH_PREFIX = "/authz"  # the sidecar's listen.path_prefix: Envoy's ext_authz path_prefix in envoy/envoy.yaml
# The one PEP the local stack lets ask its AuthZEN PDP (authzen.callers): agents may not probe the policy.
AUTHZEN_PEP = "spiffe://demo.local/pep/gateway"
# Every OPA that serves decisions keeps its data converted for the evaluator instead of converting
# what each query reads: 7-10 % fewer allocations per decision with the shipped policy
# (./taskw bench-policy -- --store both), for more memory per byte of data. The same flag is in
# docker-compose.yml and the chart's OPA container (tests/deploy check both against this list).
# OPA's access log ("Received request." and "Sent response.", two lines per query at info) goes to
# debug: every query is a decision whose decision-log event already carries its request id, path
# and time, so the access lines only added two lines to each decision's one, and CPU per decision.
OPA_RUN_FLAGS = ["--optimize-store-for-read-speed", "--log-level-request=debug"]
# The Go runtime's settings for every OPA that serves decisions (README, Performance). A decision
# allocates a lot and keeps little: collect garbage at 3x the live heap instead of 2x, and let the
# goroutine that serves a kept-alive connection keep the stack the evaluator grew it to, instead of
# the collector shrinking it between queries and the next query copying it back. Also in
# docker-compose.yml and the chart (opa.goRuntime, with GOMEMLIMIT from the memory limit).
OPA_ENV = {"GOGC": "200", "GODEBUG": "gcshrinkstackoff=1"}
Mode = Literal["http", "grpc"]  # how Envoy asks the sidecar: ext_authz HTTP service or gRPC


_MAX_SOCKET_PATH = 100  # bytes, with a margin: a unix socket path (sun_path) holds 107 and its NUL
_LONGEST_SOCKET_NAME = "sidecar-grpc.sock"


def opa_env() -> dict[str, str]:
    """This process's environment with :data:`OPA_ENV` over it, for an OPA process."""
    return {**os.environ, **OPA_ENV}


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
    bundle_service: int = 8182
    decision_logs: int = 8183
    spire_server: int = 8081
    sidecar_grpc: int = 9193

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(len(fields(cls))))

    def check_available(self, unused: frozenset[str] = frozenset()) -> None:
        for field in fields(self):
            if field.name in unused:
                continue
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
        mode: Mode = "http",
        *,
        bundle_service: bool = False,
        decision_log_service: bool = False,
        publish_on_start: bool = True,
        wait_ready: bool = True,
        spire: bool = False,
        workload_api_socket: str | None = None,
        shadow: Path | None = None,
        otlp_address: str | None = None,
        profile: str = "agent",
        response_path: bool = True,
    ) -> None:
        self.workdir = workdir.resolve()
        # profile: the sidecar's (config `profile`); opa-envoy-plugin also gets the shipped
        # decision-log mask beside the bundle, since credentials reach that policy verbatim.
        self.profile = profile
        # response_path=False: Envoy without its ext_proc filter and the sidecar without the MCP
        # response path (the request path alone: bench/mcp_response.py's baseline).
        self.response_path = response_path
        self.ports = ports or Ports()
        self.bundle = bundle.resolve()
        self.decision_path = decision_path
        self.max_body_bytes = max_body_bytes
        self.sidecar_env = sidecar_env or {}
        self.mode = mode
        self.logs = self.workdir / "logs"
        self.trust_domain = DevTrustDomain(self.workdir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # bundle_service: OPA pulls a signed bundle built from ``bundle`` from a bundle service
        # (polling, signature verification) instead of reading the directory itself.
        self.bundle_service = bundle_service
        self.bundle_key = SigningKey(self.workdir / "bundle-signing.key", self.workdir / "bundle-signing.pub")
        self.bundle_root = self.workdir / "bundle-service"
        self.publish_on_start = publish_on_start
        # decision_log_service: OPA ships (masked) decision logs to the receiver's JSON-lines file.
        self.decision_log_service = decision_log_service
        self.decision_log = self.logs / "decisions.jsonl"
        # wait_ready=False: start even when OPA has no valid policy (the sidecar then answers 503).
        self.wait_ready = wait_ready
        # spire: start a real SPIRE server and agent; the sidecar takes JWT bundles and Envoy its
        # mTLS certificates from the agent's Workload API. workload_api_socket: the same with a
        # Workload API that is already running (``unix:///path``).
        self.spire = spire
        self.spire_deployment: Spire | None = None
        self.workload_api_socket = workload_api_socket
        self.envoy_sds_dir = self.workdir / "envoy-sds"
        # shadow: a candidate bundle in a second OPA that the sidecar asks beside the live one,
        # never enforced (shadow mode, docs/configuration.md); its decision log is opa-shadow.log.
        self.shadow = shadow.resolve() if shadow is not None else None
        # otlp_address: an OTLP/HTTP collector (host:port, e.g. devstack.otlp_receiver) the sidecar
        # (tracing.endpoint) and OPA (distributed_tracing) export their spans to.
        self.otlp_address = otlp_address

    # -- URLs -----------------------------------------------------------------------------
    @property
    def egress_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.egress}"

    @property
    def ingress_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.ingress}"

    @property
    def sidecar_url(self) -> str:
        """The sidecar's own API (tasks, JWKS); agents call it directly, not through Envoy."""
        return f"http://127.0.0.1:{self.ports.sidecar}"

    @property
    def sidecar_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sidecar_admin}"

    @property
    def opa_url(self) -> str:
        """OPA's REST API, on a unix socket only the sidecar (the trio's user) can open."""
        return f"unix://{self.opa_socket}"

    # -- the trio's unix sockets ------------------------------------------------------------
    # As in the pod: the check endpoint, OPA and Envoy's admin listen on unix sockets in a run
    # directory only the trio's user can open (an emptyDir mounted into Envoy, the sidecar and
    # OPA only), so an agent sharing the loopback reaches Envoy's egress listener and the agent
    # API, and nothing else of the trio.
    @property
    def run_dir(self) -> Path:
        """``workdir/run``; for a workdir too deep for unix socket paths (~107 bytes: pytest's
        numbered temporary directories grow with every run), an owner-only directory in the system's
        temporary directory named after the workdir, so the same stack finds it again."""
        nested = self.workdir / "run"
        if len(str(nested / _LONGEST_SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return nested
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"authz-run-{digest}"

    @property
    def check_socket(self) -> Path:
        return self.run_dir / "sidecar.sock"

    @property
    def grpc_socket(self) -> Path:
        return self.run_dir / "sidecar-grpc.sock"

    @property
    def ext_proc_socket(self) -> Path:
        """The MCP response path (Envoy's ext_proc filter asks the sidecar here)."""
        return self.run_dir / "ext_proc.sock"

    @property
    def opa_socket(self) -> Path:
        return self.run_dir / "opa.sock"

    @property
    def shadow_socket(self) -> Path:
        return self.run_dir / "opa-shadow.sock"

    @property
    def envoy_admin_socket(self) -> Path:
        return self.run_dir / "envoy-admin.sock"

    @property
    def service_token(self) -> Path:
        """OPA's bearer token for the bundle service and the decision-log receiver (owner only)."""
        return self.run_dir / "service-token"

    def check(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        via: Path | None = None,
    ) -> UnixResponse:
        """Call the sidecar's check endpoint directly, as only Envoy can (``target`` without the prefix)."""
        return unix_request(via or self.check_socket, method, self.check_prefix + target, headers, body)

    @property
    def check_prefix(self) -> str:
        """The check endpoint's path prefix as this stack's sidecars are configured (an override in
        ``sidecar_env`` wins there, so it does here)."""
        return self.sidecar_env.get("AUTHZ_LISTEN__PATH_PREFIX", CHECK_PATH_PREFIX)

    def opa_request(self, method: str, target: str) -> UnixResponse:
        """OPA's REST API over its socket (``/v1/status``, ``/health``)."""
        return unix_request(self.opa_socket, method, target, timeout=5)

    def envoy_admin(self, method: str, target: str) -> UnixResponse:
        return unix_request(self.envoy_admin_socket, method, target, timeout=5)

    @property
    def bundle_service_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.bundle_service}"

    @property
    def decision_log_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.decision_logs}"

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
        # Ports of optional services this stack does not run need not be free.
        optional = {"bundle_service": self.bundle_service, "decision_logs": self.decision_log_service}
        optional["spire_server"] = self.spire
        optional.update(opa=False, envoy_admin=False, sidecar_grpc=False)  # unix sockets now
        self.ports.check_available(frozenset(name for name, used in optional.items() if not used))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.logs.chmod(0o700)  # in a pod the trio's logs are its containers' streams, not the agent's to read
        self.make_run_dir()
        self.trust_domain.ensure()
        self.ensure_credential_key()
        self.oidc.ensure()
        if self.spire:
            self.start_spire()
        if self.bundle_service:
            self.start_bundle_service()
        if self.decision_log_service:
            self.start_decision_log_receiver()
        self.start_opa()
        if self.shadow is not None:
            self.start_shadow_opa()
        self.start_upstream()
        self.start_sidecar()
        self._write_envoy_config()
        self.start_envoy()
        self._wait_http("upstream", f"http://127.0.0.1:{self.ports.upstream}/healthz")
        self._wait_http("envoy", "/ready", unix_socket=self.envoy_admin_socket)
        self._wait_http("sidecar", f"{self.sidecar_admin_url}/{'readyz' if self.wait_ready else 'healthz'}")

    def start_upstream(self) -> None:
        jwks = f"{self.sidecar_url}/.well-known/jwks.json"
        argv = [sys.executable, "-m", "devstack", "upstream", "--port", str(self.ports.upstream)]
        self._spawn("upstream", [*argv, "--jwks-url", jwks])

    def start_envoy(self) -> None:
        """Envoy on the config ``_write_envoy_config`` wrote (a restart keeps its certificates)."""
        config = self.workdir / "envoy.yaml"
        argv = [find_tool("envoy"), "-c", str(config), "--log-level", "warning"]
        self._spawn("envoy", [*argv, "--disable-hot-restart", "--use-dynamic-base-id"])

    def make_run_dir(self) -> None:
        """The trio's socket directory, owner only (a unix socket path has room for ~107 bytes)."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # In a shared temporary directory the name is predictable: use it only if it is ours.
        found = self.run_dir.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            raise StackError(f"{self.run_dir} is not a directory of this user's")
        self.run_dir.chmod(0o700)
        if not self.service_token.exists():
            self.service_token.touch(mode=0o600)
            self.service_token.write_text(secrets.token_urlsafe(32))
        longest = max(len(str(path)) for path in (self.check_socket, self.grpc_socket, self.envoy_admin_socket))
        if longest > _MAX_SOCKET_PATH:
            raise StackError(f"the stack's run directory {self.run_dir} is too deep for unix socket paths")

    def start_opa(self) -> None:
        argv = [find_tool("opa"), "run", "--server", "--addr", f"unix://{self.opa_socket}", "--log-format", "json"]
        argv += ["--unix-socket-perm", "660", *OPA_RUN_FLAGS]
        if self.bundle_service or self.decision_log_service:
            config = self.workdir / "opa-config.yaml"
            config.write_text(
                yaml.safe_dump(
                    opa_config(
                        bundle_service_url=self.bundle_service_url if self.bundle_service else None,
                        public_key=self.bundle_key.public if self.bundle_service else None,
                        decision_log_url=self.decision_log_url if self.decision_log_service else None,
                        token_path=self.service_token,
                        tracing_address=self.otlp_address,
                    ),
                    sort_keys=False,
                )
            )
            argv += ["--config-file", str(config)]
        else:
            argv += ["--set", "decision_logs.console=true", "--set", "status.prometheus=true", *decision_log_flags()]
            argv += distributed_tracing_flags(self.otlp_address)
        if not self.bundle_service:
            bundle = with_log_mask(self.bundle, self.workdir) if self.profile == "opa-envoy-plugin" else self.bundle
            argv += ["--bundle", str(bundle), "--ignore", "*_test.rego"]
        self._spawn("opa", argv, env=opa_env())
        self._wait_http("opa", f"/health{'?bundles' if self.wait_ready else ''}", unix_socket=self.opa_socket)

    def start_shadow_opa(self) -> None:
        """The candidate bundle (``shadow``) in its own OPA, decision logs on its console."""
        assert self.shadow is not None
        argv = [find_tool("opa"), "run", "--server", "--addr", f"unix://{self.shadow_socket}", "--log-format", "json"]
        argv += ["--unix-socket-perm", "660", *OPA_RUN_FLAGS, "--set", "decision_logs.console=true"]
        argv += decision_log_flags()
        self._spawn("opa-shadow", [*argv, "--bundle", str(self.shadow), "--ignore", "*_test.rego"], env=opa_env())
        self._wait_http("opa-shadow", "/health?bundles", unix_socket=self.shadow_socket)

    def start_bundle_service(self, publish: bool = True) -> None:
        SigningKey.ensure(self.workdir)
        if publish and self.publish_on_start:
            self.publish_bundle()
        argv = [sys.executable, "-m", "sidecar.services.bundle_server", "--dir", str(self.bundle_root)]
        argv += ["--token-file", str(self.service_token)]
        self._spawn("bundle-service", [*argv, "--port", str(self.ports.bundle_service)])
        self._wait_http("bundle-service", f"{self.bundle_service_url}/healthz")

    def publish_bundle(
        self, source: Path | None = None, revision: str | None = None, key: SigningKey | None = None
    ) -> str:
        """Build ``source`` (default: the stack's bundle) into a signed bundle and publish it; the revision."""
        source = (source or self.bundle).resolve()
        revision = revision or default_revision(source)
        built = build_bundle(
            source,
            self.workdir / "bundle-build" / f"{BUNDLE_NAME}.tar.gz",
            revision,
            key or SigningKey.ensure(self.workdir),
            opa=find_tool("opa"),  # the checkout's .tools/bin too, as for the stack's own OPA
        )
        publish(built, self.bundle_root, BUNDLE_NAME)
        return revision

    def start_decision_log_receiver(self) -> None:
        argv = [sys.executable, "-m", "sidecar.services.decision_log_receiver", "--out", str(self.decision_log)]
        argv += ["--token-file", str(self.service_token)]
        self._spawn("decision-log-receiver", [*argv, "--port", str(self.ports.decision_logs)])
        self._wait_http("decision-log-receiver", f"{self.decision_log_url}/healthz")

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

    def start_replica(self, name: str = "replica") -> Path:
        """A second sidecar with the same config (keys, state store) on its own ports and check
        socket; returns the socket. It shares state only through a shared store (``state.backend: redis``)."""
        api, admin = Ports.free().sidecar, Ports.free().sidecar_admin
        socket = self.run_dir / f"{name}.sock"
        config = self.sidecar_config()
        config["listen"] = {"host": "127.0.0.1", "port": api, "path_prefix": CHECK_PATH_PREFIX, "socket": str(socket)}
        config["admin"] = {"host": "127.0.0.1", "port": admin}
        config.pop("grpc", None)
        config.pop("mcp_responses", None)  # one ext_proc server per stack: the main sidecar's
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, **self.sidecar_env, "AUTHZ_CONFIG": str(path)}
        self._spawn(name, [sys.executable, "-m", "sidecar", "serve"], env=env)
        self._wait_http(name, f"http://127.0.0.1:{admin}/readyz")
        return socket

    def stop_process(self, name: str) -> None:
        self._stop(name, signal.SIGTERM)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._stop(name, signal.SIGTERM)
        if self.spire_deployment is not None:
            self.spire_deployment.stop()
        if not self.run_dir.is_relative_to(self.workdir):  # the short one, outside the workdir
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def start_spire(self) -> None:
        try:
            self.spire_deployment = Spire(self.workdir / "spire", self.ports.spire_server)
            self.spire_deployment.start()
            self.spire_deployment.register_demo()
        except (SpireError, ToolMissing) as exc:
            raise StackError(f"SPIRE did not start: {exc}") from exc
        self.workload_api_socket = self.spire_deployment.workload_api

    def start_svid_files(self) -> None:
        """Envoy's ingress certificate from the Workload API, as SDS files Envoy reloads."""
        assert self.workload_api_socket is not None
        for stale in (svid_files.cert_file(self.envoy_sds_dir), svid_files.bundle_file(self.envoy_sds_dir)):
            stale.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "devstack", "svid-files", "--socket", self.workload_api_socket]
        self._spawn("svid-files", [*argv, "--spiffe-id", ENVOY_ID, "--out", str(self.envoy_sds_dir)])
        deadline = time.monotonic() + 60
        written = (svid_files.cert_file(self.envoy_sds_dir), svid_files.bundle_file(self.envoy_sds_dir))
        while not all(path.exists() for path in written):
            process = self.processes["svid-files"]
            if process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"no SVID for Envoy from the Workload API:\n{self.log_tail('svid-files')}")
            time.sleep(0.1)

    def _jwt_bundle_config(self) -> dict[str, object]:
        if self.workload_api_socket:
            return {"bundle_files": {}, "workload_api_socket": self.workload_api_socket}
        return {"bundle_files": {self.trust_domain.name: str(self.trust_domain.jwt_bundle)}}

    def sidecar_config(self) -> dict[str, object]:
        td = self.trust_domain
        return {
            "listen": {
                "host": "127.0.0.1",
                "port": self.ports.sidecar,
                "path_prefix": CHECK_PATH_PREFIX,
                "socket": str(self.check_socket),
            },
            "admin": {"host": "127.0.0.1", "port": self.ports.sidecar_admin},
            "profile": self.profile,
            "grpc": {"enabled": self.mode == "grpc", "socket": str(self.grpc_socket)},
            "mcp_responses": {"enabled": self.response_path, "socket": str(self.ext_proc_socket)},
            "opa": {"url": self.opa_url, "decision_path": self.decision_path},
            # The one number rendered into Envoy's with_request_body.max_request_bytes too.
            "request_body": {
                "max_bytes": max(1_048_576, self.max_body_bytes),
                "envoy_max_request_bytes": self.max_body_bytes,
            },
            "identity": {
                "sources": ["xfcc", "jwt_svid"],
                "trust_domains": [td.name],
                "xfcc": {"trusted_secret_file": str(td.xfcc_secret)},
                "jwt_svid": {
                    "audiences": [DEFAULT_AUDIENCE],
                    **self._jwt_bundle_config(),
                },
            },
            "credentials": {"keys_dir": str(self.credential_keys), "reload_seconds": 1},
            "approvals": {
                "public_url": self.sidecar_url,
                "oidc_issuer": self.oidc.issuer,
                "oidc_jwks_file": str(self.oidc.jwks_file),
            },
            "authzen": {"callers": [AUTHZEN_PEP]},
            # No load balancer sends to the local stack, so nothing needs the 5 s to notice /readyz
            # failing: a stop waits only for the checks in flight (tests start and stop many stacks).
            "shutdown": {"drain_delay_seconds": 0},
            **({"shadow": {"opa_url": f"unix://{self.shadow_socket}"}} if self.shadow is not None else {}),
            **({"tracing": {"endpoint": f"http://{self.otlp_address}/v1/traces"}} if self.otlp_address else {}),
        }

    @property
    def oidc(self) -> DevOidcIssuer:
        """The development OIDC issuer whose ID tokens human approvers use."""
        return DevOidcIssuer(self.workdir)

    @property
    def credential_keys(self) -> Path:
        """The sidecar's signing keys (task tokens, upstream credentials): the newest *.pem signs."""
        return self.workdir / "credential-keys"

    def ensure_credential_key(self) -> None:
        if not any(self.credential_keys.glob("*.pem")):
            write_key(self.credential_keys / "key-1.pem", generate_key("ES256"))

    def run_until_interrupted(self) -> None:
        """Block until Ctrl-C or SIGTERM; a part that dies is started again, like the kubelet does
        (devstack/supervisor.py), while the rest keeps serving."""
        from devstack.supervisor import Supervisor

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # not via SIGINT: a stack started in the background ignores it

        signal.signal(signal.SIGTERM, interrupt)
        try:
            Supervisor(self).run()
        except KeyboardInterrupt:
            print("\nstopping", flush=True)

    def banner(self) -> str:
        p = self.ports
        return "\n".join(
            [
                "authz-sidecar local stack is up (Ctrl-C stops it)",
                f"  Envoy egress        {self.egress_url}   (agents send a JWT-SVID, audience {DEFAULT_AUDIENCE})",
                f"  Envoy mTLS ingress  {self.ingress_url}  (agents present an X.509-SVID)",
                f"  Envoy admin         unix socket {self.envoy_admin_socket}",
                f"  sidecar check       unix socket {self.grpc_socket if self.mode == 'grpc' else self.check_socket}"
                + ("  (gRPC mode)" if self.mode == "grpc" else "  (Envoy only)"),
                f"  agent API           {self.sidecar_url}/v1/tasks  (tasks, approvals, JWKS)",
                f"  AuthZEN PDP         {self.sidecar_url}  (/access/v1/*, /.well-known/authzen-configuration)",
                f"                      asked by the PEP {AUTHZEN_PEP} with its JWT-SVID",
                f"  sidecar admin       {self.sidecar_admin_url}  (/healthz /readyz /metrics)",
                f"  OPA                 {self.opa_url}  bundle {self.bundle}, decision {self.decision_path}",
                f"  demo upstream       http://127.0.0.1:{p.upstream}",
                *self._platform_banner(),
                f"  logs                {self.logs}",
                "Try:",
                self._token_hint(),
                f'  curl -i -H "Authorization: Bearer $TOKEN" {self.egress_url}/api/docs/handbook',
            ]
        )

    def _platform_banner(self) -> list[str]:
        lines = []
        if self.bundle_service:
            lines.append(f"  bundle service      {self.bundle_service_url}  (OPA polls the signed bundle)")
        if self.decision_log_service:
            lines.append(f"  decision logs       {self.decision_log_url}/logs -> {self.decision_log}")
        if self.shadow is not None:
            lines.append(f"  shadow OPA          {self.shadow}  (never enforced; authz.shadow lines in sidecar.log)")
        if self.spire_deployment is not None:
            lines.append(f"  SPIRE Workload API  {self.spire_deployment.workload_api}")
        elif self.workload_api_socket:
            lines.append(f"  Workload API        {self.workload_api_socket}")
        return lines

    def _token_hint(self) -> str:
        if self.spire_deployment is not None:
            socket = self.spire_deployment.workload_socket
            return (
                f"  TOKEN=$(.tools/bin/spire-agent api fetch jwt -audience {DEFAULT_AUDIENCE} "
                f"-spiffeID spiffe://demo.local/agent/reader -socketPath {socket} | sed -n 2p | tr -d '[:space:]')"
            )
        return "  TOKEN=$(.venv/bin/authz-dev mint-jwt --spiffe-id spiffe://demo.local/agent/reader)"

    # -- internals ------------------------------------------------------------------------
    def _write_envoy_config(self) -> Path:
        td = self.trust_domain
        server = td.mint_x509(f"spiffe://{td.name}/envoy/ingress", self.workdir / "envoy", ("localhost", "127.0.0.1"))
        rendered = render_envoy_config(
            {
                "RUN_DIR": self.run_dir,
                "EGRESS_PORT": self.ports.egress,
                "INGRESS_PORT": self.ports.ingress,
                "UPSTREAM_PORT": self.ports.upstream,
                "MAX_BODY_BYTES": self.max_body_bytes,
                "SERVER_CERT": server.cert,
                "SERVER_KEY": server.key,
                "TRUST_BUNDLE": server.bundle,
                "TRUST_DOMAIN": td.name,
                "XFCC_SECRET": td.xfcc_secret.read_text().strip(),
            },
            GRPC_TEMPLATE if self.mode == "grpc" else TEMPLATE,
        )
        if not self.response_path:
            rendered = without_response_path(rendered)
        if self.workload_api_socket:
            self.start_svid_files()
            rendered = svid_files.use_sds_files(rendered, "ingress_mtls", self.envoy_sds_dir)
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

    def _wait_http(self, name: str, url: str, timeout: float = 60.0, unix_socket: Path | None = None) -> None:
        """Until ``url`` answers 200; with ``unix_socket``, ``url`` is the path on that socket."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                if unix_socket is not None:
                    if unix_request(unix_socket, "GET", url, timeout=1).status_code == 200:
                        return
                elif requests.get(url, timeout=1).status_code == 200:
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.1)
        raise StackError(f"{name} not ready at {url} after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def without_response_path(rendered: str) -> str:
    """The rendered Envoy config without its ext_proc filters (and their per-route settings)."""
    config = yaml.safe_load(rendered)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                hcm = network["typed_config"]
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    for route in vhost["routes"]:
                        route.get("typed_per_filter_config", {}).pop("envoy.filters.http.ext_proc", None)
    return str(yaml.safe_dump(config, sort_keys=False))
