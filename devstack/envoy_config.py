"""Envoy's configuration from one template: envoy/envoy.yaml (envoy/envoy-grpc.yaml in gRPC mode).

The local stack renders the template as it is (``render_envoy_config``, the ``local`` and
``local-grpc`` variants). Every deployed Envoy config is rendered from the same template with a
variant file, ``envoy/variants/<name>.yaml`` (``render_variant``), and committed as a generated
file: ``kubernetes-egress`` → charts/authz-sidecar/files/envoy-egress.yaml, ``kubernetes-ingress``
→ charts/authz-sidecar/files/envoy-ingress.yaml (the Helm chart fills in the deployment's tools,
trust domain and node), ``compose`` → compose/envoy.yaml.

A variant gives only what differs between deployments:

- ``values``: the template's ``${NAME}`` placeholders (addresses, ports, the run directory of the
  trio's unix sockets, the body limit, the XFCC secret's source); ``null`` means "given when
  rendering" (``render_variant(name, {NAME: value})``);
- ``node``; ``listeners``: which of the template's listeners run (egress, ingress_mtls);
- ``tls_sds``: the ingress listener's certificate and trust bundle over SDS (SPIRE) instead of
  the template's files, keeping the template's client-certificate requirement and SAN matchers;
- ``routing``: per listener, ``tools`` (one virtual host per tool: the template's routes, refusals
  included, with only the final route's cluster changed) and ``otherwise`` (virtual hosts Envoy
  answers itself, e.g. 403 for a destination that is not a tool);
- ``clusters`` (the tools', with their upstream mTLS, and SPIRE's SDS) and ``extra_listeners``
  (listeners that only answer, e.g. the kubelet's readiness listener).

Everything that decides what is checked and how (the ext_authz filter, the connection manager,
the headers removed, the refusal routes, the error reply, the access log, the check cluster)
comes from the template: the renderer refuses a variant that tries to set any of it.
``extends: <variant>`` starts from another variant (``values``, ``clusters``, ``extra_listeners``
and ``routing`` merge by name, ``null`` removes an entry; other keys replace).

    python -m devstack.envoy_config --write    # regenerate the committed files (./taskw envoy-configs)
    python -m devstack.envoy_config --check    # exit 1 when a committed file is not its rendering
    python -m devstack.envoy_config --variant kubernetes-egress-local --set RUN_DIR=/tmp/run ...
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
GRPC_TEMPLATE = REPO_ROOT / "envoy" / "envoy-grpc.yaml"  # ext_authz gRPC mode
VARIANTS = REPO_ROOT / "envoy" / "variants"
REGENERATE = "./taskw envoy-configs"

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HCM = "envoy.filters.network.http_connection_manager"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"

VARIANT_KEYS = frozenset(
    {
        "description",
        "extends",
        "abstract",
        "template",
        "output",
        "sidecar_config",
        "values",
        "node",
        "listeners",
        "tls_sds",
        "routing",
        "clusters",
        "extra_listeners",
    }
)
MERGED_BY_NAME = frozenset({"values", "clusters", "extra_listeners", "routing"})
NOT_INHERITED = frozenset({"description", "abstract", "output", "sidecar_config"})
# Keys that would send traffic somewhere: a listener a variant adds may only answer by itself.
FORWARDING_KEYS = frozenset(
    {"route", "redirect", "cluster", "cluster_name", "weighted_clusters", "cluster_header", "rds", "scoped_routes"}
)


class VariantError(ValueError):
    """A variant file that is malformed or tries to set what only the template may set."""


def render_envoy_config(values: Mapping[str, object], template: Path = TEMPLATE) -> str:
    """The template as the local stack runs it: fill every ``${NAME}``; a missing value is an
    error, never an empty string. The listener addresses default to the ``local`` variant's."""
    defaults = {k: v for k, v in _spec("local")["values"].items() if v is not None}
    filled = {k: str(v) for k, v in {**defaults, **values}.items()}
    return Template(template.read_text(encoding="utf-8")).substitute(filled)


# -- variants ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    template: Path
    output: Path | None  # the committed file it renders to (None: rendered at run time only)
    sidecar_config: Path | None  # the config of the sidecar this Envoy asks
    description: str
    abstract: bool
    spec: dict[str, Any]


def variant_names() -> list[str]:
    return sorted(path.stem for path in VARIANTS.glob("*.yaml"))


def committed_variants() -> list[Variant]:
    """The variants whose rendering is a committed file."""
    return [v for v in map(load_variant, variant_names()) if v.output is not None]


def load_variant(name: str) -> Variant:
    spec = _spec(name)
    template = REPO_ROOT / spec.get("template", "envoy/envoy.yaml")
    output, sidecar = spec.get("output"), spec.get("sidecar_config")
    return Variant(
        name=name,
        template=template,
        output=REPO_ROOT / output if output else None,
        sidecar_config=REPO_ROOT / sidecar if sidecar else None,
        description=str(spec.get("description", "")).strip(),
        abstract=bool(spec.get("abstract", False)),
        spec=spec,
    )


def _spec(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The variant file merged over the one it extends."""
    if name in chain:
        raise VariantError(f"variants extend each other in a circle: {' -> '.join((*chain, name))}")
    path = VARIANTS / f"{name}.yaml"
    if not re.fullmatch(r"[a-z0-9-]+", name) or not path.is_file():
        raise VariantError(f"no Envoy variant {name!r} (envoy/variants/{name}.yaml); known: {variant_names()}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise VariantError(f"{path.name}: a mapping is expected")
    unknown = set(raw) - VARIANT_KEYS
    if unknown:
        raise VariantError(
            f"{path.name}: unknown keys {sorted(unknown)}; a variant may set only {sorted(VARIANT_KEYS)}"
        )
    parent = raw.get("extends")
    spec: dict[str, Any] = {}
    if parent is not None:
        spec = {k: v for k, v in _spec(str(parent), (*chain, name)).items() if k not in NOT_INHERITED}
    for key, value in raw.items():
        if key == "extends":
            continue
        if key in MERGED_BY_NAME:
            if not isinstance(value, dict):
                raise VariantError(f"{path.name}: {key} must be a mapping by name")
            spec[key] = {**spec.get(key, {}), **value}
        else:
            spec[key] = value
    spec.setdefault("values", {})
    return spec


def render_variant(name: str, values: Mapping[str, object] | None = None) -> str:
    """The variant's Envoy config as committed: a header saying how it was made, then the YAML."""
    variant = load_variant(name)
    config = variant_config(name, values)
    return _header(variant) + yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


def variant_config(name: str, values: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The template with the variant spliced in and every placeholder filled (``values`` win)."""
    variant = load_variant(name)
    if variant.abstract:
        raise VariantError(f"{name} is abstract: render a variant that extends it")
    spec = variant.spec
    config = load_template(variant.template)
    resources = config["static_resources"]
    checks = check_clusters(config)

    listeners = {item["name"]: item for item in resources["listeners"]}
    wanted = spec.get("listeners", list(listeners))
    if not wanted or not set(wanted) <= set(listeners):
        raise VariantError(f"{name}: listeners {wanted} must be some of the template's {list(listeners)}")
    kept = [item for item in resources["listeners"] if item["name"] in wanted]

    routing: dict[str, Any] = spec.get("routing", {})
    if not set(routing) <= set(wanted):
        raise VariantError(f"{name}: routing for {sorted(set(routing) - set(wanted))}, which the variant does not run")
    for listener in kept:
        if routing.get(listener["name"]) is not None:
            _route_tools(name, listener, routing[listener["name"]], checks)
    if spec.get("tls_sds") is not None:
        tls = [listener for listener in kept if _tls_contexts(listener)]
        if not tls:
            raise VariantError(f"{name}: tls_sds is set but none of its listeners terminates TLS")
        for listener in tls:
            _use_sds(name, listener, spec["tls_sds"])

    extra = []
    for listener_name, body in spec.get("extra_listeners", {}).items():
        if body is None:
            continue
        if listener_name in listeners:
            raise VariantError(f"{name}: extra listener {listener_name} has the name of a template listener")
        extra.append(_answering_listener(name, {"name": listener_name, **body}))

    own_clusters = {n: {"name": n, **body} for n, body in spec.get("clusters", {}).items() if body is not None}
    if set(own_clusters) & checks:
        raise VariantError(f"{name}: the check clusters {sorted(checks)} come from the template only")
    used = set(_cluster_references([*kept, *extra, *own_clusters.values()]))
    unused = set(own_clusters) - used
    if unused:
        raise VariantError(f"{name}: clusters {sorted(unused)} are not used by any route or SDS config")
    clusters = [own_clusters.pop(c["name"], c) for c in resources["clusters"] if c["name"] in used]
    clusters += own_clusters.values()
    undefined = used - {c["name"] for c in clusters}
    if undefined:
        raise VariantError(f"{name}: routes to clusters it does not define: {sorted(undefined)}")

    out: dict[str, Any] = {}
    if spec.get("node") is not None:
        out["node"] = spec["node"]
    for key, value in config.items():
        out[key] = {**value, "listeners": kept + extra, "clusters": clusters} if key == "static_resources" else value
    filled: dict[str, Any] = fill(out, {**spec["values"], **(values or {})}, name)
    return filled


# -- the template -----------------------------------------------------------------------------
def load_template(path: Path) -> dict[str, Any]:
    """The template as data, ``${NAME}`` placeholders kept as strings (YAML aliases become copies)."""
    template = Template(path.read_text(encoding="utf-8"))
    tokens = {name: f"__envoy_placeholder_{name}__" for name in template.get_identifiers()}
    back = {token: "${" + name + "}" for name, token in tokens.items()}
    token = re.compile("|".join(map(re.escape, back)) or r"(?!)")
    config: dict[str, Any] = json.loads(json.dumps(yaml.safe_load(template.substitute(tokens))))
    restored: dict[str, Any] = _map_strings(config, lambda s: token.sub(lambda m: back[m.group(0)], s))
    return restored


def check_clusters(config: Mapping[str, Any]) -> set[str]:
    """The clusters the template's ext_authz and ext_proc filters ask (the sidecar's)."""
    filters = [
        f["typed_config"] for f in _walk_dicts(config) if f.get("name") in (EXT_AUTHZ, EXT_PROC) and "typed_config" in f
    ]
    return set(_cluster_references(filters))


def fill(config: Any, values: Mapping[str, object], name: str = "template") -> Any:
    """Every ``${NAME}``: a whole-string placeholder takes the value's type (a port stays a number)."""
    missing: set[str] = set()

    def value_of(key: str) -> object:
        value = values.get(key)
        if value is None:
            missing.add(key)
            return "${" + key + "}"
        return value if isinstance(value, str | int | float | bool) else str(value)

    def one(text: str) -> Any:
        whole = PLACEHOLDER.fullmatch(text)
        if whole:
            return value_of(whole.group(1))
        return PLACEHOLDER.sub(lambda m: str(value_of(m.group(1))), text)

    filled = _map_strings(config, one)
    if missing:
        raise VariantError(f"{name}: no value for {sorted(missing)}")
    return filled


# -- splicing ---------------------------------------------------------------------------------
def _route_tools(name: str, listener: dict[str, Any], routing: Mapping[str, Any], checks: set[str]) -> None:
    """One virtual host per tool: the template's forwarding virtual host (its refusal routes and
    forwarding routes: the MCP endpoint's and the final one) with only the name, domains and the
    forwarding routes' cluster changed."""
    if set(routing) - {"tools", "otherwise"}:
        raise VariantError(f"{name}: routing.{listener['name']} may set only tools and otherwise")
    managers = [f["typed_config"] for chain in listener["filter_chains"] for f in chain["filters"] if f["name"] == HCM]
    if len(managers) != 1:
        raise VariantError(f"template listener {listener['name']}: one connection manager expected")
    route_config = managers[0]["route_config"]
    forwarding = [v for v in route_config["virtual_hosts"] if any("route" in r for r in v["routes"])]
    if len(forwarding) != 1 or "route" not in forwarding[0]["routes"][-1]:
        raise VariantError(f"template listener {listener['name']}: one forwarding virtual host, forwarding last")
    template_vhost = forwarding[0]
    hosts = []
    for tool in routing.get("tools") or []:
        if set(tool) != {"name", "domains", "cluster"}:
            raise VariantError(f"{name}: a tool has exactly name, domains and cluster, not {sorted(tool)}")
        if tool["cluster"] in checks:
            raise VariantError(f"{name}: tool {tool['name']} routes to the check cluster {tool['cluster']}")
        vhost = copy.deepcopy(template_vhost)
        vhost.update(name=tool["name"], domains=list(tool["domains"]))
        for route in vhost["routes"]:  # the MCP endpoint's route and the final one
            if "route" in route:
                route["route"]["cluster"] = tool["cluster"]
        hosts.append(vhost)
    for vhost in routing.get("otherwise") or []:
        hosts.append(_answering_vhost(name, vhost))
    if not any("route" in r for v in hosts for r in v["routes"]):
        raise VariantError(f"{name}: routing.{listener['name']} names no tool")
    route_config["virtual_hosts"] = hosts


def _answering_vhost(name: str, vhost: Mapping[str, Any]) -> dict[str, Any]:
    """A virtual host of the variant's own: it answers every request itself (no upstream, no
    per-route filter settings)."""
    if set(vhost) - {"name", "domains", "routes"}:
        raise VariantError(f"{name}: virtual host {vhost.get('name')} may set only name, domains and routes")
    for route in vhost["routes"]:
        if "direct_response" not in route or set(route) - {"match", "direct_response", "response_headers_to_add"}:
            raise VariantError(f"{name}: virtual host {vhost['name']} may only answer directly, not {sorted(route)}")
    return dict(vhost)


def _answering_listener(name: str, listener: dict[str, Any]) -> dict[str, Any]:
    """A listener of the variant's own (readiness): it forwards nowhere, so it needs no check."""
    forwarding = {key for node in _walk_dicts(listener) for key in node if key in FORWARDING_KEYS}
    filters = [f for chain in listener.get("filter_chains", []) for f in chain.get("filters", [])]
    http_filters = [h.get("name") for f in filters for h in f.get("typed_config", {}).get("http_filters", [])]
    if forwarding or any(f.get("name") != HCM for f in filters) or http_filters != [ROUTER] * len(filters):
        raise VariantError(
            f"{name}: extra listener {listener['name']} must only answer (one connection manager, the router,"
            f" direct responses), not forward ({sorted(forwarding)})"
        )
    for chain in listener["filter_chains"]:
        for vhost in chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]:
            _answering_vhost(name, vhost)
    return listener


def _tls_contexts(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        chain["transport_socket"]["typed_config"]
        for chain in listener["filter_chains"]
        if chain.get("transport_socket", {}).get("typed_config", {}).get("@type") == DOWNSTREAM_TLS
    ]


def _use_sds(name: str, listener: Mapping[str, Any], sds: Mapping[str, Any]) -> None:
    """The listener's certificate and trust bundle over SDS; the template's client-certificate
    requirement and SAN matchers stay."""
    if set(sds) != {"certificate", "trust_bundle", "sds_config"}:
        raise VariantError(f"{name}: tls_sds has exactly certificate, trust_bundle and sds_config")
    for context in _tls_contexts(listener):
        common = context["common_tls_context"]
        common.pop("tls_certificates")
        validation = common.pop("validation_context")
        validation.pop("trusted_ca")
        common["tls_certificate_sds_secret_configs"] = [
            {"name": sds["certificate"], "sds_config": copy.deepcopy(sds["sds_config"])}
        ]
        common["combined_validation_context"] = {
            "default_validation_context": validation,
            "validation_context_sds_secret_config": {
                "name": sds["trust_bundle"],
                "sds_config": copy.deepcopy(sds["sds_config"]),
            },
        }


# -- helpers ----------------------------------------------------------------------------------
def _walk_dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_dicts(value)


def _cluster_references(nodes: Any) -> Iterator[str]:
    for node in _walk_dicts(nodes):
        for key in ("cluster", "cluster_name"):
            if isinstance(node.get(key), str):
                yield node[key]


def _map_strings(node: Any, change: Callable[[str], Any]) -> Any:
    if isinstance(node, dict):
        return {key: _map_strings(value, change) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(value, change) for value in node]
    if isinstance(node, str):
        return change(node)
    return node


class _Dumper(yaml.SafeDumper):
    """Every mapping written out where it is used: no anchors in a generated file."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _header(variant: Variant) -> str:
    template = variant.template.relative_to(REPO_ROOT)
    lines = [
        f"GENERATED from {template} and envoy/variants/{variant.name}.yaml: do not edit.",
        f"Regenerate with `{REGENERATE}` (python -m devstack.envoy_config --write); tests/deploy fail",
        "when this file differs from its rendering. Every check, header, route and reply setting comes",
        f"from {template} (what each one protects against is written there); the variant gives only",
        "addresses, certificates, secrets and the tool routing.",
    ]
    if variant.description:
        lines += ["", *variant.description.splitlines()]
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


# -- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.envoy_config", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write every committed variant's file")
    action.add_argument("--check", action="store_true", help="exit 1 when a committed file is not its rendering")
    action.add_argument("--variant", choices=variant_names(), help="print one variant's rendering")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a placeholder's value")
    args = parser.parse_args(argv)
    if args.variant:
        values: dict[str, object] = {}
        for item in args.set:
            key, _, value = item.partition("=")
            values[key] = int(value) if value.isdigit() else value
        sys.stdout.write(render_variant(args.variant, values))
        return 0
    stale = []
    for variant in committed_variants():
        assert variant.output is not None
        rendered = render_variant(variant.name)
        current = variant.output.read_text(encoding="utf-8") if variant.output.exists() else None
        if current == rendered:
            continue
        stale.append(str(variant.output.relative_to(REPO_ROOT)))
        if args.write:
            variant.output.write_text(rendered, encoding="utf-8")
    verb = "wrote" if args.write else "not their rendering (run " + REGENERATE + ")"
    print(f"{verb}: {', '.join(stale)}" if stale else "every committed Envoy config is its rendering")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
