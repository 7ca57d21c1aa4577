"""The four setups, each a set of real processes on loopback ports.

1. ``envoy-direct``  Envoy → demo upstream, no ext_authz filter (the floor).
2. ``sidecar-http``  the dev stack as users run it (ext_authz HTTP service → sidecar → OPA).
3. ``sidecar-grpc``  the same in gRPC mode (envoy/envoy-grpc.yaml).
4. ``opa-envoy-plugin``  Envoy (the same gRPC-mode config as 3) → opa-envoy-plugin, with the
   shipped policy behind bench/plugin_bundle/ (an adapter that derives the agent fields in Rego).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from devstack.agent_client import AgentClient, AgentClientError
from devstack.stack import OPA_RUN_FLAGS, Ports, Stack, opa_env
from devstack.tools import find_tool

ADAPTER_BUNDLE = Path(__file__).resolve().parent / "plugin_bundle"
PLUGIN_DECISION_PATH = "envoy/authz/result"
MAX_BODY_BYTES = 131_072  # room for the 64 KiB body-size runs plus their JSON-RPC envelope


class _BenchStack(Stack):
    """The dev stack, with the benchmark upstream (bench/upstream.py) in place of the demo upstream."""

    opa_pprof = False  # OPA serves Go's profiles at /debug/pprof (./taskw bench-profile PROCESS=opa)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if name == "upstream":
            argv = [sys.executable, "-m", "bench.upstream", "--port", str(self.ports.upstream)]
        if name == "opa" and self.opa_pprof:
            argv = [*argv, "--pprof"]
        super()._spawn(name, argv, env)


class Setup:
    """One setup's processes; ``stack.egress_url`` is where the load goes."""

    name = ""
    authz = True

    def __init__(self, workdir: Path, bundle: Path) -> None:
        self.workdir = workdir
        self.bundle = bundle
        self.stack = self._make_stack()

    def _make_stack(self) -> Stack:
        raise NotImplementedError

    def start(self) -> None:
        self.stack.start()

    def stop(self) -> None:
        self.stack.stop()

    def restart_policy(self, bundle: Path) -> None:
        """Run the policy engine again with another bundle (policy data scaling)."""
        raise NotImplementedError(f"{self.name} has no policy engine")

    @property
    def url(self) -> str:
        return self.stack.egress_url


class SidecarSetup(Setup):
    def __init__(
        self, workdir: Path, bundle: Path, mode: str, env: dict[str, str] | None = None, *, opa_pprof: bool = False
    ) -> None:
        self.mode = mode
        self.env = env or {}
        self.opa_pprof = opa_pprof
        self.name = f"sidecar-{mode}"
        super().__init__(workdir, bundle)

    def _make_stack(self) -> Stack:
        stack = _BenchStack(
            self.workdir,
            Ports.free(),
            bundle=self.bundle,
            max_body_bytes=MAX_BODY_BYTES,
            mode="grpc" if self.mode == "grpc" else "http",
            sidecar_env=self.env,
            response_path=False,
        )
        stack.opa_pprof = self.opa_pprof
        return stack

    def restart_policy(self, bundle: Path) -> None:
        self.stack.stop_opa()
        self.stack.bundle = bundle.resolve()
        self.stack.start_opa()

    def open_task(self, agent: str, purpose: str, scopes: list[str]) -> dict[str, Any]:
        """A task grant from the sidecar's own API, for the mix's write request."""
        try:
            return AgentClient(self.stack).open_task(agent, purpose, scopes, ttl=3600)
        except AgentClientError as exc:
            raise RuntimeError(f"{self.name}: {exc}") from exc

    def task_details(self, grant: dict[str, Any], agent: str) -> dict[str, Any]:
        return AgentClient(self.stack).task(agent, grant["id"])

    def jwks(self) -> dict[str, Any]:
        response = requests.get(f"{self.stack.sidecar_url}/.well-known/jwks.json", timeout=10)
        response.raise_for_status()
        keys: dict[str, Any] = response.json()
        return keys


class _BareStack(_BenchStack):
    """A Stack that starts only the demo upstream and Envoy, plus whatever ``start_authz`` adds."""

    def start(self) -> None:
        self.ports.check_available()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.make_run_dir()
        self.trust_domain.ensure()
        self._spawn("upstream", [sys.executable, "-m", "devstack", "upstream", "--port", str(self.ports.upstream)])
        self.start_authz()
        config = self._write_envoy_config()
        flags = ["--log-level", "warning", "--disable-hot-restart", "--use-dynamic-base-id"]
        self._spawn("envoy", [find_tool("envoy"), "-c", str(config), *flags])
        self._wait_http("upstream", f"http://127.0.0.1:{self.ports.upstream}/healthz")
        self._wait_http("envoy", "/ready", unix_socket=self.envoy_admin_socket)

    def start_authz(self) -> None:
        return None


class _DirectStack(_BareStack):
    def _write_envoy_config(self) -> Path:
        path = super()._write_envoy_config()
        config = yaml.safe_load(path.read_text())
        for listener in config["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for network_filter in chain["filters"]:
                    hcm = network_filter["typed_config"]
                    hcm["http_filters"] = [f for f in hcm["http_filters"] if "ext_authz" not in f["name"]]
        config["static_resources"]["clusters"] = [
            c for c in config["static_resources"]["clusters"] if not c["name"].startswith("authz_sidecar")
        ]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


class DirectSetup(Setup):
    name = "envoy-direct"
    authz = False

    def _make_stack(self) -> Stack:
        return _DirectStack(self.workdir, Ports.free(), max_body_bytes=MAX_BODY_BYTES, response_path=False)


class _PluginStack(_BareStack):
    """opa-envoy-plugin serves ext_authz gRPC on ``ports.sidecar_grpc`` and OPA's REST API on ``ports.opa``."""

    plugin_data: dict[str, Any]

    @property
    def opa_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.opa}"

    def _write_envoy_config(self) -> Path:
        """The sidecar's gRPC cluster, pointed at the plugin's TCP listener instead of the sidecar's socket."""
        path = super()._write_envoy_config()
        config = yaml.safe_load(path.read_text())
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "authz_sidecar_grpc":
                address = {"socket_address": {"address": "127.0.0.1", "port_value": self.ports.sidecar_grpc}}
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = address
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_authz(self) -> None:
        adapter = self.workdir / "adapter-bundle"
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(ADAPTER_BUNDLE, adapter)
        (adapter / "bench").mkdir(exist_ok=True)
        (adapter / "bench" / "data.json").write_text(json.dumps(self.plugin_data))
        argv = [
            find_tool("opa-envoy-plugin"),
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{self.ports.opa}",
            "--log-format",
            "json",
            *OPA_RUN_FLAGS,  # the same OPA settings as the sidecar setups' OPA
            "--set",
            f"plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{self.ports.sidecar_grpc}",
            "--set",
            f"plugins.envoy_ext_authz_grpc.path={PLUGIN_DECISION_PATH}",
            "--set",
            "decision_logs.console=true",  # the same audit trail as the sidecar setups' OPA
            "--bundle",
            str(self.bundle),
            "--bundle",
            str(adapter),
            "--ignore",
            "*_test.rego",
        ]
        self._spawn("opa-envoy-plugin", argv, env=opa_env())  # the same Go runtime settings too
        self._wait_http("opa-envoy-plugin", f"{self.opa_url}/health?bundles")


class PluginSetup(Setup):
    """Needs ``plugin_data`` (trust-domain JWT bundle, the sidecar's JWKS, task grants) before start."""

    name = "opa-envoy-plugin"

    def _make_stack(self) -> Stack:
        return _PluginStack(
            self.workdir,
            Ports.free(),
            bundle=self.bundle,
            max_body_bytes=MAX_BODY_BYTES,
            mode="grpc",
            response_path=False,
        )

    def configure(self, jwks: dict[str, Any], tasks: dict[str, dict[str, Any]], issuer: str) -> None:
        stack = self.stack
        assert isinstance(stack, _PluginStack)
        stack.trust_domain.ensure()
        stack.plugin_data = {
            "jwt_bundle": stack.trust_domain.jwt_bundle.read_text(),
            "audience": "authz-sidecar",
            "sidecar_jwks": json.dumps(jwks),
            "issuer": issuer,
            "tasks": tasks,
        }

    def restart_policy(self, bundle: Path) -> None:
        self.stack._stop("opa-envoy-plugin", 15)
        self.stack.bundle = bundle.resolve()
        assert isinstance(self.stack, _PluginStack)
        self.stack.start_authz()


LIFTED_LIMITS = {
    "max_writes": 1_000_000_000,
    "max_calls_per_minute": 1_000_000_000,
    "agent_max_calls_per_minute": 1_000_000_000,
}
# Steady traffic (bench/traffic.py) is one agent at tens of calls a second, spread over MCP
# sessions that each stay under the per-session ceiling: only the per-agent ceiling is lifted.
AGENT_CEILING_LIFTED = {"agent_max_calls_per_minute": 1_000_000_000}


def policy_bundle(
    source: Path, target: Path, agents: int | None = None, lifted: dict[str, int] = LIFTED_LIMITS
) -> Path:
    """A copy of the shipped bundle for load: data only differs, the policy is unchanged.

    - The session limits named in ``lifted`` (``data.agent.config.session``) are raised out of
      reach: the benchmark sends thousands of calls a second as one agent, which the demo policy
      rightly rate-limits. They are still evaluated on every call.
    - With ``agents``, ``data.agent.config.agents`` holds that many entries: the demo agents stay,
      synthetic readers fill up, so the policy does the same lookups on a bigger ``data``.
    """
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = target / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    if isinstance(data.get("session"), dict):
        data["session"] = {**data["session"], **lifted}
    registry: dict[str, Any] = data["agents"]
    template = next(iter(registry.values()))
    index = 0
    while agents is not None and len(registry) < agents:
        registry[f"spiffe://demo.local/bench/agent-{index:05d}"] = template
        index += 1
    data_file.write_text(json.dumps(data))
    return target
