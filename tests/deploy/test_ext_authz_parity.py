"""Istio's proxies ask the sidecar exactly the way the tested Envoy config does.

The e2e and adversarial suites run ``envoy/envoy.yaml`` (rendered by ``devstack/stack.py``).
The Helm chart's ``files/envoy-egress.yaml`` and ``files/envoy-ingress.yaml`` and ``compose/envoy.yaml``
are rendered from that same template (``devstack/envoy_config.py``; checked by
``test_envoy_variants.py``), so they need no comparison. Istio's own proxies cannot be rendered
from it: they are configured by the chart in ``mode=istio`` (the ``envoyExtAuthzHttp``
extension provider, the ``EnvoyFilter`` for the inbound connection manager, the ``CUSTOM``
AuthorizationPolicy). This test models what istiod generates from them, reduces it to a flat
profile of what matters around ext_authz and compares it, field by field, with the tested
listener of the same role (ingress):

- the ext_authz filter: every field (failure_mode_allow, status_on_error, timeout, path_prefix,
  with_request_body, the header lists in both directions, headers_to_add, ...), with Envoy's
  defaults filled in so an omitted field equals its default;
- the HTTP connection manager around it: path normalisation, escaped slashes, underscores,
  trailing host dot, XFCC handling, the error reply, and every other field the tested one sets;
- the route configuration: headers removed before the upstream (method overrides), and any route
  or virtual host that switches ext_authz off or changes its check settings;
- the filter order and the listener's TLS requirements.

Differences Istio is meant to have are listed in ``INTENDED`` with the reason; anything else
fails with every differing field named.
"""

from __future__ import annotations

import copy
import fnmatch
import http
import inspect
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from devstack.envoy_config import TEMPLATE, render_envoy_config
from devstack.stack import Stack
from sidecar.config import validate_config
from tests.deploy.chart import config_map, render

REPO = Path(__file__).resolve().parents[2]
EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ISTIO = "charts/authz-sidecar (mode=istio)"

# A listener's role is its name: every forwarding listener of a variant must be one of these.
TESTED_LISTENERS = ("egress", "ingress_mtls")

# The intended differences, per variant (glob over profile fields → why it may differ).
EVERY_VARIANT = {
    # Where the sidecar listens: the test stack's check socket; Istio's authz Service
    # (test_chart.py checks the provider names the Service and the sidecar's port).
    "ext_authz.http_service.server_uri.uri": "the sidecar's address differs per deployment",
}
# The variants rendered from envoy/envoy.yaml (the chart's files/, compose/) are not compared here:
# test_envoy_variants.py checks that they are their rendering.
INTENDED: dict[str, dict[str, str]] = {
    ISTIO: {
        "ext_authz.http_service.server_uri.cluster": "istiod names the cluster outbound|PORT||SERVICE",
        # CUSTOM AuthorizationPolicy turns the filter on per request (checked as
        # routes.ext_authz_overrides: the policy must cover every request).
        "ext_authz.filter_enabled_metadata.*": "Istio enables ext_authz through its RBAC shadow metadata",
        "http_filters": "istiod builds the filter chain (RBAC, ext_authz, telemetry, router)",
        # Mesh mTLS is Istio's (PeerAuthentication): the peer's certificate is issued by the mesh CA,
        # and the sidecar also accepts JWT-SVIDs in this mode (istio-mode/sidecar.yaml).
        "listener.tls.*": "Istio terminates mesh mTLS; the SAN check is the mesh's trust domain",
        # istiod also sets subject and dns; the EnvoyFilter can add fields but not clear them.
        # The sidecar reads only the single element's URI.
        "hcm.set_current_client_cert_details.subject": "set by istiod, unused by the sidecar",
        "hcm.set_current_client_cert_details.dns": "set by istiod, unused by the sidecar",
        # %ENVIRONMENT(AUTHZ_XFCC_SECRET)%: each protected proxy's environment, from the
        # authz-xfcc-secret Secret (the chart's protected-workload-patch.yaml), never a literal in the mesh config.
        "ext_authz.http_service.authorization_request.headers_to_add.x-authz-xfcc-secret": "secret source",
        # istiod builds the inbound routes; the refusals of envoy/envoy.yaml (path parameters,
        # lower-case methods) are made by the sidecar and the policy as well (sidecar/request.py).
        "routes.refused_before_forwarding": "istiod owns the inbound routes; the sidecar refuses the same requests",
    },
}

# Envoy's defaults for fields a config may leave out (ext_authz.v3.ExtAuthz, BufferSettings).
EXT_AUTHZ_DEFAULTS: dict[str, Any] = {
    "failure_mode_allow": False,
    "status_on_error.code": "Forbidden",
    "include_peer_certificate": False,
    "clear_route_cache": False,
    "http_service.path_prefix": "",
}
BODY_DEFAULTS: dict[str, Any] = {
    "with_request_body.allow_partial_message": False,
    "with_request_body.pack_as_bytes": False,
}
MATCHER_LISTS = (
    "allowed_headers",
    "disallowed_headers",
    "http_service.authorization_response.allowed_upstream_headers",
    "http_service.authorization_response.allowed_upstream_headers_to_append",
    "http_service.authorization_response.allowed_client_headers",
    "http_service.authorization_response.allowed_client_headers_on_success",
)

Profile = dict[str, Any]


# -- the tested config ------------------------------------------------------------------------
def render_tested_config() -> dict[str, Any]:
    """envoy/envoy.yaml as the test stack renders it: placeholders stay visible as <NAME>,
    except the body limit, which is the stack's own default."""
    names = Template(TEMPLATE.read_text(encoding="utf-8")).get_identifiers()
    values: dict[str, object] = {name: f"<{name}>" for name in names}
    values["MAX_BODY_BYTES"] = inspect.signature(Stack).parameters["max_body_bytes"].default
    config: dict[str, Any] = yaml.safe_load(render_envoy_config(values, TEMPLATE))
    return config


def profiles_of_tested() -> dict[str, Profile]:
    profiles = dict(envoy_profiles(render_tested_config()))
    assert set(profiles) == set(TESTED_LISTENERS), "the tested config's listeners changed: update TESTED_LISTENERS"
    return profiles


# -- Envoy configs -> profiles ----------------------------------------------------------------
def envoy_profiles(config: dict[str, Any]) -> Iterator[tuple[str, Profile]]:
    """One profile per listener that asks ext_authz; a listener without it must not forward."""
    for listener in config["static_resources"]["listeners"]:
        managers = [f for chain in listener["filter_chains"] for f in chain["filters"] if f["name"] == HCM]
        if not any(f["name"] == EXT_AUTHZ for m in managers for f in m["typed_config"].get("http_filters", [])):
            assert not list(_forwarding_routes(listener)), (
                f"listener {listener['name']} forwards to an upstream without ext_authz"
            )
            continue
        assert len(listener["filter_chains"]) == 1 and len(managers) == 1, (
            f"listener {listener['name']}: several filter chains are not modelled by this test yet"
        )
        chain = listener["filter_chains"][0]
        yield listener["name"], {**tls_profile(chain.get("transport_socket")), **manager_profile(managers[0])}


def _forwarding_routes(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        if "route" in node and "match" in node:
            yield node
        for value in node.values():
            yield from _forwarding_routes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _forwarding_routes(value)


def tls_profile(transport_socket: dict[str, Any] | None) -> Profile:
    if transport_socket is None:
        return {"listener.tls": None}
    context = transport_socket["typed_config"]
    common = context.get("common_tls_context", {})
    validation = common.get("validation_context") or common.get("combined_validation_context", {}).get(
        "default_validation_context", {}
    )
    return {
        "listener.tls.require_client_certificate": context.get("require_client_certificate", False),
        "listener.tls.san_matchers": _same_trust_domain(validation.get("match_typed_subject_alt_names", [])),
        "listener.tls.certificate_source": "sds" if "tls_certificate_sds_secret_configs" in common else "files",
    }


def _same_trust_domain(node: Any) -> Any:
    """Trust domains differ per deployment (demo.local, example.org): compare the shape."""
    text = re.sub(r"spiffe://[^/\"]+/", "spiffe://TRUST_DOMAIN/", json.dumps(node, sort_keys=True))
    return json.loads(text)


def manager_profile(manager: dict[str, Any]) -> Profile:
    hcm = copy.deepcopy(manager["typed_config"])
    hcm.pop("@type", None)
    hcm.pop("stat_prefix", None)  # a name only
    filters = hcm.pop("http_filters")
    route_config = hcm.pop("route_config")
    ext_authz = [f for f in filters if f["name"] == EXT_AUTHZ]
    assert len(ext_authz) == 1
    profile: Profile = {f"hcm.{k}": v for k, v in flatten(hcm).items()}
    profile["http_filters"] = [f["name"] for f in filters]
    profile.update(route_profile(route_config))
    profile.update({f"ext_authz.{k}": v for k, v in ext_authz_profile(ext_authz[0]["typed_config"]).items()})
    return profile


def route_profile(route_config: dict[str, Any]) -> Profile:
    rest = {k: v for k, v in route_config.items() if k not in {"name", "virtual_hosts"}}
    profile = {f"route_config.{k}": v for k, v in flatten(rest).items()}
    overrides: list[str] = []
    refusals: set[str] = set()
    for vhost in route_config.get("virtual_hosts", []):
        routes = vhost.get("routes", [])
        forwarding = [i for i, r in enumerate(routes) if "route" in r]
        if not forwarding:
            continue  # answers every request itself: nothing reaches an upstream
        overrides += [f"virtual host {vhost['name']}: {c}" for c in _ext_authz_settings(vhost)]
        overrides += [
            f"route {json.dumps(r['match'])}: {c}" for r in routes if "route" in r for c in _ext_authz_settings(r)
        ]
        # The requests refused before any check (direct answers ahead of the first forwarding route).
        refusals.add(json.dumps(routes[: forwarding[0]], sort_keys=True))
    profile["routes.ext_authz_overrides"] = sorted(overrides)
    assert len(refusals) <= 1, "forwarding virtual hosts refuse different requests"
    profile["routes.refused_before_forwarding"] = json.loads(refusals.pop()) if refusals else None
    return profile


def _ext_authz_settings(node: dict[str, Any]) -> list[str]:
    """Per-route / per-virtual-host ext_authz settings (switched off, other check settings)."""
    return [
        json.dumps(config, sort_keys=True)
        for name, config in node.get("typed_per_filter_config", {}).items()
        if name == EXT_AUTHZ or "ExtAuthzPerRoute" in json.dumps(config)
    ]


def ext_authz_profile(typed_config: dict[str, Any]) -> Profile:
    config = copy.deepcopy(typed_config)
    config.pop("@type", None)
    request = config.get("http_service", {}).get("authorization_request", {})
    if "allowed_headers" in request:  # the deprecated place (istiod still writes it there)
        assert "allowed_headers" not in config
        config["allowed_headers"] = request.pop("allowed_headers")
    if "headers_to_add" in request:
        request["headers_to_add"] = {h["key"]: h["value"] for h in request["headers_to_add"]}
    flat = flatten(config)
    for name in MATCHER_LISTS:
        for key in [k for k in flat if k == name or k.startswith(name + ".")]:
            value = flat.pop(key)
            assert key == f"{name}.patterns", f"unexpected matcher list shape at {key}"
            flat[name] = _matchers(value)
    for key, default in EXT_AUTHZ_DEFAULTS.items():
        flat.setdefault(key, default)
    if any(k.startswith("with_request_body.") for k in flat):
        for key, default in BODY_DEFAULTS.items():
            flat.setdefault(key, default)
    return flat


def _matchers(patterns: list[dict[str, Any]]) -> list[str]:
    """Header name matchers, order-free. ignore_case is dropped: Envoy matches lower-cased header
    names, and istiod sets it on every pattern."""
    out = []
    for pattern in patterns:
        kinds = {k: v for k, v in pattern.items() if k != "ignore_case"}
        assert len(kinds) == 1, pattern
        ((kind, value),) = kinds.items()
        out.append(f"{kind}:{value.lower() if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
    return sorted(out)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted paths; lists and scalars are leaves."""
    if isinstance(node, dict) and (node or not prefix):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


# -- Istio -> profile -------------------------------------------------------------------------
# What istiod generates for a sidecar's inbound HTTP connection manager, for the fields the
# tested config sets (pilot/pkg/networking/core: buildSidecarInboundHTTPOpts and the
# connection manager builder). meshConfig.pathNormalization and the EnvoyFilter apply on top.
ISTIO_INBOUND_HCM: dict[str, Any] = {
    "forward_client_cert_details": "APPEND_FORWARD",
    "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
    "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
}
ISTIO_PATH_NORMALIZATION: dict[str, dict[str, Any]] = {
    "NONE": {"normalize_path": False},
    "BASE": {"normalize_path": True},
    "DEFAULT": {"normalize_path": True},
    "MERGE_SLASHES": {"normalize_path": True, "merge_slashes": True},
    "DECODE_AND_MERGE_SLASHES": {
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
    },
}


def istio_documents() -> list[dict[str, Any]]:
    """The Istio resources of the istio-mode release, and the mesh config it renders for the
    operator to merge into Istio's."""
    docs = render("istio")
    holder = config_map(docs, "mesh-config.yaml")
    assert holder is not None
    mesh = yaml.safe_load(holder["data"]["mesh-config.yaml"])
    return [mesh, *(d for d in docs if d["kind"] in {"AuthorizationPolicy", "EnvoyFilter", "PeerAuthentication"})]


def istio_inbound() -> tuple[dict[str, Any], dict[str, Any]]:
    """The modelled inbound connection manager of a protected workload (with the generated
    ext_authz filter and the patched route configuration), and the CUSTOM policy's spec."""
    docs = istio_documents()
    mesh = next(d for d in docs if d["kind"] == "IstioOperator")["spec"]["meshConfig"]
    policies = [d for d in docs if d["kind"] == "AuthorizationPolicy" and d["spec"].get("action") == "CUSTOM"]
    assert len(policies) == 1
    policy = policies[0]
    providers = {p["name"]: p for p in mesh["extensionProviders"]}
    provider = providers[policy["spec"]["provider"]["name"]]
    assert set(provider) == {"name", "envoyExtAuthzHttp"}, (
        "only envoyExtAuthzHttp is modelled: a gRPC provider would be compared with envoy/envoy-grpc.yaml"
    )
    namespace = policy["metadata"]["namespace"]
    filters = [d for d in docs if d["kind"] == "EnvoyFilter" and d["metadata"].get("namespace") == namespace]

    hcm: dict[str, Any] = copy.deepcopy(ISTIO_INBOUND_HCM)
    normalization = mesh.get("pathNormalization", {}).get("normalization", "DEFAULT")
    hcm.update(ISTIO_PATH_NORMALIZATION[normalization])
    route_config: dict[str, Any] = {}
    for envoy_filter in filters:
        assert "workloadSelector" not in envoy_filter["spec"], "must apply where the AuthorizationPolicy applies"
        for patch in envoy_filter["spec"]["configPatches"]:
            assert patch["match"]["context"] == "SIDECAR_INBOUND"
            assert patch["patch"]["operation"] == "MERGE"
            value = copy.deepcopy(patch["patch"]["value"])
            if patch["applyTo"] == "NETWORK_FILTER":
                assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == HCM
                typed = value.pop("typed_config")
                assert not value and typed.pop("@type").endswith(".HttpConnectionManager")
                _merge(hcm, typed)
            elif patch["applyTo"] == "ROUTE_CONFIGURATION":
                assert set(patch["match"]) == {"context"}, "must apply to every inbound route configuration"
                _merge(route_config, value)
            else:
                pytest.fail(f"EnvoyFilter patch on {patch['applyTo']} is not modelled by this test")
    hcm["http_filters"] = [{"name": EXT_AUTHZ, "typed_config": istio_ext_authz(provider["envoyExtAuthzHttp"])}]
    hcm["route_config"] = {**route_config, "virtual_hosts": []}
    return {"@type": HCM_TYPE, "stat_prefix": "inbound", **hcm}, policy["spec"]


def istio_profile() -> Profile:
    hcm, policy = istio_inbound()
    profile = {
        "listener.tls.require_client_certificate": False,  # PERMISSIVE unless a PeerAuthentication says STRICT
        "listener.tls.san_matchers": [],
        "listener.tls.certificate_source": "istio",
        **manager_profile({"typed_config": hcm}),
    }
    profile["http_filters"] = "built by istiod"
    if not _covers_every_request(policy):
        profile["routes.ext_authz_overrides"] = ["the CUSTOM AuthorizationPolicy does not select every request"]
    return profile


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Protobuf MERGE: messages merge field by field, repeated fields append, scalars replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key] = into[key] + value
        else:
            into[key] = copy.deepcopy(value)


def _covers_every_request(spec: dict[str, Any]) -> bool:
    """The route-level switch of Istio: requests a CUSTOM policy's rules do not match skip ext_authz."""
    if "selector" in spec or "targetRef" in spec or "targetRefs" in spec:
        return False
    for rule in spec.get("rules", []):
        if set(rule) - {"to"}:
            continue
        operations = [t["operation"] for t in rule.get("to", [])]
        if not operations or any(set(op) == {"paths"} and set(op["paths"]) & {"*", "/*"} for op in operations):
            return True
    return False


def istio_ext_authz(http_provider: dict[str, Any]) -> dict[str, Any]:
    """The ext_authz filter istiod generates from an envoyExtAuthzHttp provider
    (pilot/pkg/security/authz/builder/extauthz.go: generateHTTPConfig)."""

    def matchers(headers: list[str] | None) -> dict[str, Any] | None:
        if not headers:
            return None
        patterns = []
        for header in headers:
            if header.startswith("*"):
                patterns.append({"suffix": header[1:], "ignore_case": True})
            elif header.endswith("*"):
                patterns.append({"prefix": header[:-1], "ignore_case": True})
            else:
                patterns.append({"exact": header, "ignore_case": True})
        return {"patterns": patterns}

    service: dict[str, Any] = {
        "server_uri": {
            "uri": f"http://{http_provider['service']}",
            "cluster": f"outbound|{http_provider['port']}||{http_provider['service']}",
            "timeout": http_provider.get("timeout", "600s"),
        },
    }
    if http_provider.get("pathPrefix"):
        service["path_prefix"] = http_provider["pathPrefix"]
    request: dict[str, Any] = {}
    allowed = matchers(http_provider.get("includeRequestHeadersInCheck") or http_provider.get("includeHeadersInCheck"))
    if allowed:
        request["allowed_headers"] = allowed
    additional = http_provider.get("includeAdditionalHeadersInCheck", {})
    if additional:
        request["headers_to_add"] = [{"key": k, "value": additional[k]} for k in sorted(additional)]
    if request:
        service["authorization_request"] = request
    response = {
        name: value
        for name, value in {
            "allowed_upstream_headers": matchers(http_provider.get("headersToUpstreamOnAllow")),
            "allowed_client_headers": matchers(http_provider.get("headersToDownstreamOnDeny")),
            "allowed_client_headers_on_success": matchers(http_provider.get("headersToDownstreamOnAllow")),
        }.items()
        if value
    }
    if response:
        service["authorization_response"] = response
    config: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": http_provider.get("failOpen", False),
        "http_service": service,
        "filter_enabled_metadata": {
            "filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}},
        },
    }
    if "statusOnError" in http_provider:
        phrase = http.HTTPStatus(int(http_provider["statusOnError"])).phrase
        config["status_on_error"] = {"code": phrase.replace(" ", "").replace("-", "")}
    body = http_provider.get("includeRequestBodyInCheck")
    if body is not None:
        config["with_request_body"] = {
            "max_request_bytes": body.get("maxRequestBytes", 0),
            "allow_partial_message": body.get("allowPartialMessage", False),
            "pack_as_bytes": body.get("packAsBytes", False),
        }
    return config


# -- the variants -----------------------------------------------------------------------------
def variant_profiles() -> Iterator[tuple[str, str, Profile]]:
    """(variant, listener role, profile) for every forwarding listener not rendered from the template."""
    # Istio's inbound listener in front of a tool: the ingress role (XFCC + the per-deployment secret).
    yield ISTIO, "ingress_mtls", istio_profile()


VARIANTS = list(variant_profiles())


def differences(tested: Profile, variant: Profile, intended: dict[str, str]) -> list[str]:
    out = []
    for key in sorted(set(tested) | set(variant)):
        want, got = tested.get(key, "<absent>"), variant.get(key, "<absent>")
        if want != got and not any(fnmatch.fnmatchcase(key, pattern) for pattern in intended):
            out.append(f"{key}: tested {json.dumps(want)} but deployed {json.dumps(got)}")
    return out


# -- tests ------------------------------------------------------------------------------------
def test_every_deployed_variant_is_compared() -> None:
    seen = {variant for variant, _, _ in VARIANTS}
    assert seen == set(INTENDED) == {ISTIO}, f"variants found {sorted(seen)}"


@pytest.mark.parametrize(("variant", "listener", "profile"), VARIANTS, ids=[f"{v}:{x}" for v, x, _ in VARIANTS])
def test_ext_authz_settings_equal_the_tested_config(variant: str, listener: str, profile: Profile) -> None:
    assert listener in TESTED_LISTENERS, f"{variant}: listener {listener} has no tested counterpart"
    tested = profiles_of_tested()[listener]
    found = differences(tested, profile, {**EVERY_VARIANT, **INTENDED[variant]})
    assert not found, f"{variant} ({listener}) differs from envoy/envoy.yaml:\n  " + "\n  ".join(found)


@pytest.mark.parametrize(("variant", "listener", "profile"), VARIANTS, ids=[f"{v}:{x}" for v, x, _ in VARIANTS])
def test_the_minted_credential_reaches_the_upstream(variant: str, listener: str, profile: Profile) -> None:
    """On allow the sidecar replaces the agent's Authorization with a just-in-time credential;
    Envoy applies it only when the check answer may set ``authorization`` upstream. Without it
    the tool receives the agent's own JWT-SVID."""
    upstream = profile["ext_authz.http_service.authorization_response.allowed_upstream_headers"]
    assert "exact:authorization" in upstream, f"{variant} ({listener}) drops the minted credential: {upstream}"


def test_the_comparison_can_fail() -> None:
    tested = profiles_of_tested()["egress"]
    broken = copy.deepcopy(tested)
    broken["ext_authz.failure_mode_allow"] = True
    broken["route_config.request_headers_to_remove"] = []
    del broken["hcm.merge_slashes"]
    found = differences(tested, broken, EVERY_VARIANT)
    assert [f.split(":")[0] for f in found] == [
        "ext_authz.failure_mode_allow",
        "hcm.merge_slashes",
        "route_config.request_headers_to_remove",
    ]
    # A route that switches ext_authz off is a difference too.
    config = render_tested_config()
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    forwarding = [r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "route" in r]
    forwarding[0]["typed_per_filter_config"] = {
        EXT_AUTHZ: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": True,
        }
    }
    (_, switched_off), _ = envoy_profiles(config)
    assert differences(tested, switched_off, EVERY_VARIANT)[0].startswith("routes.ext_authz_overrides")


def test_istio_translation_matches_istiod() -> None:
    """The model of istiod's generator on the fields it maps (headers with * become prefix/suffix)."""
    generated = istio_ext_authz(
        {
            "service": "a.b.svc.cluster.local",
            "port": 9191,
            "includeRequestHeadersInCheck": ["x-agent-*", "*-token", "authorization"],
            "headersToUpstreamOnAllow": ["x-authz-*"],
            "statusOnError": "503",
            "includeRequestBodyInCheck": {"maxRequestBytes": 10},
        }
    )
    profile = ext_authz_profile(generated)
    assert profile["allowed_headers"] == ["exact:authorization", "prefix:x-agent-", "suffix:-token"]
    assert profile["status_on_error.code"] == "ServiceUnavailable"
    assert profile["http_service.server_uri.timeout"] == "600s"
    assert profile["with_request_body.allow_partial_message"] is False
    assert profile["failure_mode_allow"] is False


def test_istio_patches_are_valid_envoy_config(envoy_bin: str, tmp_path: Path) -> None:
    """The EnvoyFilter's fields and the generated ext_authz filter, as one inbound listener
    Envoy validates (a misspelt field in envoy-filter.yaml fails here, not in the mesh)."""
    hcm, _ = istio_inbound()
    ext_authz = hcm["http_filters"][0]["typed_config"]
    cluster = ext_authz["http_service"]["server_uri"]["cluster"]
    hcm["http_filters"].append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}})
    hcm["route_config"]["virtual_hosts"] = [
        {"name": "inbound", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}
    ]
    config = {
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                    "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }
    path = tmp_path / "istio-inbound.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The sidecars behind the rendered variants: test_envoy_variants.py, each against its own Envoy.
SIDECAR_CONFIGS = [
    REPO / "charts" / "authz-sidecar" / "files" / "sidecar-istio.yaml",
    REPO / "examples" / "sidecar.yaml",
]


@pytest.mark.parametrize("path", SIDECAR_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_sidecar_knows_envoys_body_buffer(path: Path) -> None:
    """A body that fills Envoy's buffer is treated as truncated only if the sidecar's
    request_body.envoy_max_request_bytes is the number Envoy buffers (Istio's proxies buffer
    what the tested one does: the parity test above)."""
    buffered = {profile["ext_authz.with_request_body.max_request_bytes"] for profile in profiles_of_tested().values()}
    configured = validate_config(yaml.safe_load(path.read_text())).request_body.envoy_max_request_bytes
    assert buffered == {configured}, f"{path.name}: sidecar {configured}, Envoy {buffered}"
