"""Every Envoy that runs is rendered from one template (devstack/envoy_config.py).

- The committed configs (charts/authz-sidecar/files/envoy-{egress,ingress}.yaml, compose/envoy.yaml)
  are exactly their rendering, and are what the Helm chart and compose deploy: a hand edit fails
  here.
- Everything but addresses, certificates, secrets and the tool routing is the template's, and the
  renderer refuses a variant that tries to set any of it.
- The invariants hold for every rendered variant, the local stack's (HTTP and gRPC mode) included:
  the minted credential is forwarded, client-sent ``x-authz-*`` and the override headers are
  stripped, ext_authz never fails open, the body limit is the sidecar's
  ``request_body.envoy_max_request_bytes``, the admin API and the check cluster are unix
  sockets (the check socket is the one the sidecar listens on), and an access log joins the
  request id and the decision id.
- ``envoy --mode validate`` accepts every variant. Validate mode builds the whole config but binds
  no listener, opens no socket and starts no SDS subscription, so the pipes in /run/authz, the
  SPIRE agent's socket and $AUTHZ_XFCC_SECRET need not exist here; certificate files named in the
  config must (the local variants' are minted by the stack).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from devstack import envoy_config
from devstack.envoy_config import (
    EXT_AUTHZ,
    HCM,
    VariantError,
    check_clusters,
    committed_variants,
    fill,
    load_template,
    load_variant,
    render_envoy_config,
    render_variant,
    variant_config,
    variant_names,
)
from devstack.stack import Ports, Stack
from devstack.upstream import METHOD_OVERRIDE_HEADERS, TARGET_OVERRIDE_HEADERS
from sidecar.config import Config, validate_config
from tests.deploy.chart import config_map, render

REPO = Path(__file__).resolve().parents[2]
COMMITTED = [v.name for v in committed_variants()]
DECISION_ID = {
    # HTTP mode: the sidecar returns x-authz-decision-id to the client, on allow and on deny.
    "http": "%RESP(X-AUTHZ-DECISION-ID)%",
    # gRPC mode: the sidecar sets it in the ext_authz filter's dynamic metadata.
    "grpc": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%",
}


@dataclass
class Rendered:
    name: str
    text: str
    sidecar: Config  # the config of the sidecar this Envoy asks

    @property
    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.text)
        return loaded


def stack_rendering(workdir: Path, mode: str) -> tuple[Stack, str]:
    stack = Stack(workdir, Ports.free(), mode="grpc" if mode == "grpc" else "http")
    stack.trust_domain.ensure()
    return stack, stack._write_envoy_config().read_text()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every variant as it runs: the committed ones as rendered, the local stack's as the stack
    writes them, kubernetes-egress-local with a stack's addresses."""
    out = {}
    for variant in committed_variants():
        assert variant.sidecar_config is not None, f"{variant.name}: name its sidecar_config"
        sidecar = validate_config(yaml.safe_load(variant.sidecar_config.read_text()))
        out[variant.name] = Rendered(variant.name, render_variant(variant.name), sidecar)
    for name, mode in (("local", "http"), ("local-grpc", "grpc")):
        stack, text = stack_rendering(tmp_path_factory.mktemp(name), mode)
        out[name] = Rendered(name, text, validate_config(stack.sidecar_config()))
    stack, _ = stack_rendering(tmp_path_factory.mktemp("kel"), "http")
    values = {"RUN_DIR": stack.run_dir, "EGRESS_PORT": 1, "HEALTH_PORT": 2, "UPSTREAM_PORT": stack.ports.upstream}
    text = render_variant("kubernetes-egress-local", values)
    out["kubernetes-egress-local"] = Rendered("kubernetes-egress-local", text, validate_config(stack.sidecar_config()))
    return out


RENDERED = [n for n in variant_names() if not load_variant(n).abstract]


def test_every_variant_is_checked(rendered: dict[str, Rendered]) -> None:
    assert set(rendered) == set(RENDERED)
    assert {"kubernetes-egress", "kubernetes-ingress", "compose"} <= set(COMMITTED)


# -- the committed files ----------------------------------------------------------------------
@pytest.mark.parametrize("name", COMMITTED)
def test_the_committed_file_is_its_rendering(name: str) -> None:
    variant = load_variant(name)
    assert variant.output is not None
    committed = variant.output.read_text(encoding="utf-8")
    assert committed == render_variant(name), (
        f"{variant.output.relative_to(REPO)} is not its rendering: edit envoy/envoy.yaml or "
        f"envoy/variants/{name}.yaml and run ./taskw envoy-configs"
    )
    assert committed.startswith("# GENERATED from ") and "./taskw envoy-configs" in committed.split("\n\n")[0]


def test_the_deployments_run_the_committed_files() -> None:
    """The Helm chart's Envoy ConfigMap is a committed rendering (for the tool the variant names; the
    chart's own tests cover other tools); compose mounts compose/envoy.yaml where its Envoy reads
    its config."""
    renderings = [(variant_config(name), name) for name in COMMITTED]
    deployed = set()
    for mode in ("egress", "ingress"):
        envoy = config_map(render(mode), "envoy.yaml")
        assert envoy is not None, mode
        config = yaml.safe_load(envoy["data"]["envoy.yaml"])
        names = [name for rendering, name in renderings if rendering == config]
        assert names, f"the chart's {mode} Envoy config is no variant's rendering"
        deployed.update(names)
    assert deployed == {n for n in COMMITTED if n.startswith("kubernetes-")}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["envoy"]
    assert "./compose/envoy.yaml:/etc/envoy/envoy.yaml:ro" in compose["volumes"]
    assert compose["command"][:2] == ["-c", "/etc/envoy/envoy.yaml"]


def test_compose_shares_the_run_directory_between_envoy_and_the_sidecar_only() -> None:
    run_dir = load_variant("compose").spec["values"]["RUN_DIR"]
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    mounting = {name for name, s in services.items() for v in s.get("volumes", []) if v.split(":")[1] == run_dir}
    assert mounting == {"envoy", "authz-sidecar"}
    sources = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if v.split(":")[1] == run_dir}
    assert len(sources) == 1 and not next(iter(sources)).startswith("."), "one named volume, not a host directory"


# -- only addresses, certificates, secrets and tool routing differ ----------------------------
def _without_routing(listener: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The listener without its virtual hosts and TLS certificate source, and its virtual hosts."""
    listener = copy.deepcopy(listener)
    listener.pop("address")
    vhosts = []
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            vhosts += network_filter["typed_config"]["route_config"].pop("virtual_hosts")
        tls = chain.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context")
        if tls is not None:  # keep what is verified (SAN matchers), not where the certificates come from
            validation = (
                tls.get("validation_context") or tls["combined_validation_context"]["default_validation_context"]
            )
            validation.pop("trusted_ca", None)
            chain["transport_socket"]["typed_config"]["common_tls_context"] = {"verified": validation}
    return listener, vhosts


@pytest.mark.parametrize("name", COMMITTED)
def test_everything_else_is_the_templates(name: str) -> None:
    variant = load_variant(name)
    config = variant_config(name)
    template = load_template(variant.template)
    values = variant.spec["values"]
    assert config["admin"] == fill(template["admin"], values)
    ours = {listener["name"]: listener for listener in template["static_resources"]["listeners"]}
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] not in ours:
            assert not list(check_clusters(listener)), "only the template's listeners ask the sidecar"
            continue
        got, got_hosts = _without_routing(listener)
        want, want_hosts = (fill(part, values) for part in _without_routing(ours[listener["name"]]))
        assert got == want, f"{name}: listener {listener['name']} differs from the template's beyond routing"
        (template_host,) = [h for h in want_hosts if any("route" in r for r in h["routes"])]
        for host in got_hosts:
            if not any("route" in r for r in host["routes"]):
                continue  # answers every request itself (not-allowed)
            # The refusal routes as they are; the forwarding ones (the MCP endpoint's, the final
            # one) differ only in their cluster.
            assert len(host["routes"]) == len(template_host["routes"]), f"{host['name']}: the routes"
            for route, template_route in zip(host["routes"], template_host["routes"], strict=True):
                route = copy.deepcopy(route)
                if "route" in route:
                    route["route"]["cluster"] = template_route["route"]["cluster"]
                assert route == template_route, f"{host['name']}: only the forwarding routes' cluster may differ"
    checks = check_clusters(template)
    want_checks = [fill(c, values) for c in template["static_resources"]["clusters"] if c["name"] in checks]
    assert [c for c in config["static_resources"]["clusters"] if c["name"] in checks] == want_checks


def test_local_is_the_template_as_the_stack_renders_it() -> None:
    """The variant renderer and the stack's renderer agree on the template as it is."""
    for name, template in (("local", envoy_config.TEMPLATE), ("local-grpc", envoy_config.GRPC_TEMPLATE)):
        names = Template(template.read_text()).get_identifiers()
        values: dict[str, object] = {n: f"/v/{n.lower()}" for n in names}
        values.update({n: 1000 + i for i, n in enumerate(sorted(names)) if n.endswith("_PORT") or n.startswith("MAX")})
        values.pop("EGRESS_ADDRESS"), values.pop("INGRESS_ADDRESS")  # the local variant's
        assert variant_config(name, values) == yaml.safe_load(render_envoy_config(values, template))


VARIANT_BASE = {"extends": "kubernetes", "listeners": ["egress"], "values": {"EGRESS_ADDRESS": "::", "EGRESS_PORT": 1}}
TOOL = {"name": "t", "domains": ["t"], "cluster": "t"}
T_CLUSTER = {"type": "STATIC", "load_assignment": {"cluster_name": "t", "endpoints": []}}
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "an ext_authz setting": ({"http_filters": []}, "unknown keys"),
    "per-tool filter settings": (
        {"routing": {"egress": {"tools": [{**TOOL, "typed_per_filter_config": {}}]}}},
        "exactly name, domains and cluster",
    ),
    "a forwarding catch-all": (
        {
            "routing": {
                "egress": {
                    "tools": [TOOL],
                    "otherwise": [
                        {"name": "x", "domains": ["*"], "routes": [{"match": {}, "route": {"cluster": "t"}}]}
                    ],
                }
            }
        },
        "may only answer directly",
    ),
    "a listener that forwards": (
        {
            "extra_listeners": {
                "side": {
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": "t"}}]}
                    ]
                }
            }
        },
        "must only answer",
    ),
    "its own check cluster": ({"clusters": {"authz_sidecar": T_CLUSTER}}, "come from the template only"),
    "a tool behind the check cluster": (
        {"routing": {"egress": {"tools": [{**TOOL, "cluster": "authz_sidecar"}]}}},
        "routes to the check cluster",
    ),
    "a missing value": ({"values": {"EGRESS_ADDRESS": "::", "EGRESS_PORT": None}}, "no value for ['EGRESS_PORT']"),
    "a route to no cluster": ({"clusters": {}}, "routes to clusters it does not define: ['t']"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_renderer_refuses_what_only_the_template_may_set(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(envoy_config.VARIANTS / "kubernetes.yaml", tmp_path)
    spec, message = REFUSED[case]
    valid = {**VARIANT_BASE, "routing": {"egress": {"tools": [TOOL]}}, "clusters": {"t": T_CLUSTER}}
    (tmp_path / "valid.yaml").write_text(yaml.safe_dump(valid))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**valid, **spec}))
    monkeypatch.setattr(envoy_config, "VARIANTS", tmp_path)
    variant_config("valid")
    with pytest.raises(VariantError) as refused:
        variant_config("bad")
    assert message in str(refused.value)


# -- invariants of every variant --------------------------------------------------------------
def _managers(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] == HCM:
                yield network_filter["typed_config"]


def _matchers(node: dict[str, Any] | None) -> set[str]:
    return {f"{kind}:{value}" for p in (node or {}).get("patterns", []) for kind, value in p.items()}


def _pipes(cluster: dict[str, Any]) -> list[str | None]:
    return [
        e["endpoint"]["address"].get("pipe", {}).get("path")
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]


def problems(config: dict[str, Any], sidecar: Config) -> list[str]:
    """What breaks an invariant, one line each (empty when every one holds)."""
    found = []
    if "pipe" not in config["admin"]["address"]:
        found.append("admin: not a unix socket")
    checks = check_clusters(config)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] in checks:
            socket = sidecar.grpc.socket if "grpc" in cluster["name"] else sidecar.listen.socket
            if cluster["name"] == "authz_ext_proc":
                socket = sidecar.mcp_responses.socket
            if _pipes(cluster) != [str(socket)]:
                found.append(f"check cluster {cluster['name']}: {_pipes(cluster)}, the sidecar listens on {socket}")
    for listener in config["static_resources"]["listeners"]:
        where = f"listener {listener['name']}"
        managers = list(_managers(listener))
        forwarding = [
            m for m in managers if any("route" in r for v in m["route_config"]["virtual_hosts"] for r in v["routes"])
        ]
        if len(managers) != sum(len(c["filters"]) for c in listener["filter_chains"]):
            found.append(f"{where}: a network filter other than the HTTP connection manager")
        for hcm in forwarding:
            ext_authz = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ]
            if len(ext_authz) != 1 or hcm["http_filters"][0]["name"] != EXT_AUTHZ:
                found.append(f"{where}: forwards without ext_authz first")
                continue
            check = ext_authz[0]
            if check.get("failure_mode_allow", False) is not False:
                found.append(f"{where}: failure_mode_allow")
            if "prefix:x-authz-" not in _matchers(check.get("allowed_headers")):
                found.append(f"{where}: the sidecar does not see client-sent x-authz-* headers, so cannot strip them")
            mode = "grpc" if "grpc_service" in check else "http"
            if mode == "http":  # in gRPC mode the check answer sets and removes upstream headers itself
                upstream = _matchers(
                    check["http_service"].get("authorization_response", {}).get("allowed_upstream_headers")
                )
                if "exact:authorization" not in upstream:
                    found.append(f"{where}: the minted credential (authorization) is not forwarded")
                if "prefix:x-authz-" not in upstream:
                    found.append(f"{where}: the sidecar's x-authz-* headers do not reach the upstream")
            body, expected = check.get("with_request_body", {}).get("max_request_bytes"), sidecar.request_body
            if body != expected.envoy_max_request_bytes:
                found.append(
                    f"{where}: Envoy buffers {body} bytes, the sidecar expects {expected.envoy_max_request_bytes}"
                )
            found += _response_path_problems(where, listener, hcm, sidecar)
            removed = set(hcm["route_config"].get("request_headers_to_remove", []))
            missing = sorted({*METHOD_OVERRIDE_HEADERS, *TARGET_OVERRIDE_HEADERS} - removed)
            if missing:
                found.append(f"{where}: override headers reach the upstream: {missing}")
            logs = [json.dumps(log) for log in hcm.get("access_log", [])]
            if not any("%REQ(X-REQUEST-ID)%" in log and DECISION_ID[mode] in log for log in logs):
                found.append(f"{where}: no access log with the request id and {DECISION_ID[mode]}")
    return found


def _response_path_problems(where: str, listener: dict[str, Any], hcm: dict[str, Any], sidecar: Config) -> list[str]:
    """ext_proc sees MCP responses only, never fails open, and buffers a bounded amount."""
    found = []
    procs = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    if not procs:
        return [f"{where}: no MCP response path (ext_proc)"]
    proc = procs[0]
    if proc.get("failure_mode_allow", False) is not False:
        found.append(f"{where}: ext_proc failure_mode_allow")
    if proc.get("processing_mode", {}).get("response_body_mode") != "BUFFERED":
        found.append(f"{where}: ext_proc does not see whole response bodies")
    if not isinstance(listener.get("per_connection_buffer_limit_bytes"), int):
        found.append(f"{where}: no bound on what the response path buffers")
    if not sidecar.mcp_responses.enabled:
        found.append(f"{where}: ext_proc, but the sidecar serves no response path")
    if not next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc").get("disabled"):
        found.append(f"{where}: ext_proc is on by default (Envoy's own replies would wait for it)")
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            on = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_proc")
            if "route" in route and (route["match"] == {"path": "/mcp"}) != (on is not None):
                found.append(f"{where}: ext_proc is not on for exactly the MCP route ({route['match']})")
            if on is not None and on.get("overrides", {}).get("failure_mode_allow") is not False:
                found.append(f"{where}: the MCP route's ext_proc may fail open")
            if "route" in route and not _bounded(route["route"]):
                found.append(f"{where}: a call on {route['match']} may hold its stream for ever")
    return found


def _seconds(duration: str | None) -> float:
    return float(duration.removesuffix("s")) if duration else 0.0


def _bounded(action: dict[str, Any]) -> bool:
    """Every call on the route ends: a whole-response timeout (Envoy's default 15 s when absent), or,
    where that is off (the MCP route, for long streamed calls), both an idle and a total bound."""
    if "timeout" not in action or _seconds(action["timeout"]) > 0:
        return True
    total = _seconds(action.get("max_stream_duration", {}).get("max_stream_duration"))
    return _seconds(action.get("idle_timeout")) > 0 and total > 0


@pytest.mark.parametrize("name", RENDERED)
def test_invariants(rendered: dict[str, Rendered], name: str) -> None:
    found = problems(rendered[name].config, rendered[name].sidecar)
    assert not found, f"{name}:\n  " + "\n  ".join(found)


def test_the_invariants_can_fail(rendered: dict[str, Rendered]) -> None:
    config, sidecar = rendered["compose"].config, rendered["compose"].sidecar
    assert not problems(config, sidecar)
    hcm = next(_managers(config["static_resources"]["listeners"][0]))
    check = hcm["http_filters"][0]["typed_config"]
    check["failure_mode_allow"] = True
    check["with_request_body"]["max_request_bytes"] = 1
    check["http_service"]["authorization_response"]["allowed_upstream_headers"]["patterns"].pop()
    hcm["route_config"]["request_headers_to_remove"].remove("x-original-url")
    hcm["access_log"][0]["typed_config"]["log_format"]["json_format"].pop("decision_id")
    config["admin"]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}
    config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}
    }
    found = problems(config, sidecar)
    expected = [
        "admin: not a unix socket",
        "check cluster authz_sidecar: [None], the sidecar listens on /run/authz/sidecar.sock",
        "listener egress: failure_mode_allow",
        "listener egress: the minted credential (authorization) is not forwarded",
        "listener egress: Envoy buffers 1 bytes",
        "listener egress: override headers reach the upstream: ['x-original-url']",
        "listener egress: no access log",
    ]
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected, strict=True)), found
    hcm["http_filters"].reverse()
    assert problems(config, sidecar)[-1] == "listener egress: forwards without ext_authz first"
    hcm["http_filters"].reverse()
    mcp = next(r for v in hcm["route_config"]["virtual_hosts"] for r in v["routes"] if r["match"] == {"path": "/mcp"})
    del mcp["route"]["max_stream_duration"]
    assert "listener egress: a call on {'path': '/mcp'} may hold its stream for ever" in problems(config, sidecar)


@pytest.mark.parametrize("name", RENDERED)
def test_envoy_validates(rendered: dict[str, Rendered], name: str, envoy_bin: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(rendered[name].text)
    result = subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
