"""The chart in mode=istio works as a shared service, as deployed (rendered with helm,
ci/istio-values.yaml: the bundled Valkey, the control-plane services).

Several authz-sidecar replicas serve the whole mesh, so:

- they share one state store: Redis (here the chart's bundled server), reached with a password from a Secret;
- they sign task tokens and credentials with the same keys: a Secret mounted at credentials.keys_dir;
- nothing secret is in git: no Secret objects, no ConfigMap, env literal or mesh config holding a
  secret value; the XFCC secret reaches the mesh's proxies through their environment (from the
  authz-xfcc-secret Secret, the chart's protected-workload-patch.yaml) and the sidecar as a file;
- the mesh's proxies forward the agent's task, approval and intent headers to the check;
- each caller reaches only its paths of the one HTTP port. This is evaluated the way Istio applies
  the chart's mesh policy (STRICT mTLS, the ALLOW AuthorizationPolicy) and Kubernetes the
  NetworkPolicies, for every route the sidecar's own app serves: the mesh's proxies (namespace
  tools) only the check and the JWKS, agents only the task API and their approvals' status,
  the ingress gateway only the approver API, anyone else nothing;
- the check's XFCC stays one element through the service's own istio-proxy.

Every check is a function of the rendered documents; test_the_checks_can_fail runs each on a copy
with the matching manifest change reverted and expects it to fail.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from sidecar.config import Config, CredentialsConfig, StateConfig, XfccConfig, load_config, validate_config
from sidecar.intent import CONFIDENCE_HEADER, PURPOSE_HEADER
from tests.deploy.chart import REPO, config_map, render
from tests.deploy.test_chart import K8S_VERSION

INSTALL_DOC = REPO / "docs" / "helm.md"  # the Secrets an install creates first
NAMESPACE = "authz-system"
ISTIO_KINDS = {"AuthorizationPolicy", "PeerAuthentication", "EnvoyFilter"}
JWKS_PATH = "/.well-known/jwks.json"

Doc = dict[str, Any]
Secrets = Callable[[str, str], str]


@dataclass
class Topology:
    docs: list[Doc]  # the release's Kubernetes objects
    mesh: list[Doc]  # its Istio resources in authz-system (the service's own mesh policy)
    provider: Doc  # the envoyExtAuthzHttp provider of the mesh config it renders
    protected: list[Doc]  # a tool Deployment patched with the chart's protected-workload-patch.yaml


@dataclass(frozen=True)
class Caller:
    namespace: str
    labels: dict[str, str]
    principal: str | None  # the verified mTLS peer; None in plaintext


TOOL_PROXY = Caller("tools", {"app": "tickets"}, "cluster.local/ns/tools/sa/tickets")
AGENT = Caller("agents", {"app": "research-agent"}, "cluster.local/ns/agents/sa/research-agent")
GATEWAY = Caller(
    "istio-system", {"istio": "ingressgateway"}, "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
)
OTHER = Caller("default", {"app": "web"}, "cluster.local/ns/default/sa/web")
TOOL_PLAINTEXT = Caller("tools", {"app": "tickets"}, None)
MONITORING = Caller("monitoring", {"app": "prometheus"}, None)

# Who may use which kind of route on the sidecar's HTTP port (authz-system-mesh.yaml's table).
ACCESS: list[tuple[Caller, set[str]]] = [
    (TOOL_PROXY, {"check", "jwks"}),
    (AGENT, {"tasks", "approval-status"}),
    (GATEWAY, {"approvals"}),
    (OTHER, set()),
    (TOOL_PLAINTEXT, set()),
]


# -- rendering ----------------------------------------------------------------------------------
def render_protected_tool(patch_text: str) -> list[Doc]:
    """A tool's Deployment as its team patches it with the chart's protected-workload-patch.yaml
    (kubectl patch: a strategic merge, containers merged by name)."""
    tool: Doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tickets", "namespace": "tools"},
        "spec": {
            "selector": {"matchLabels": {"app": "tickets"}},
            "template": {
                "metadata": {"labels": {"app": "tickets"}},
                "spec": {"containers": [{"name": "tickets", "image": "tickets:1"}]},
            },
        },
    }
    patch = yaml.safe_load(patch_text)
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"template"}, "a pod template patch only"
    ours = tool["spec"]["template"]["spec"]["containers"]
    for container in patch["spec"]["template"]["spec"]["containers"]:
        existing = [c for c in ours if c["name"] == container["name"]]
        if existing:
            existing[0].update(container)
        else:
            ours.append(container)
    return [tool]


@pytest.fixture(scope="module")
def rendered() -> Topology:
    docs = render("istio")
    istio = config_map(docs, "mesh-config.yaml")
    assert istio is not None
    mesh_config = yaml.safe_load(istio["data"]["mesh-config.yaml"])
    (provider,) = mesh_config["spec"]["meshConfig"]["extensionProviders"]
    return Topology(
        docs=[d for d in docs if d["kind"] not in ISTIO_KINDS],
        mesh=[d for d in docs if d["kind"] in ISTIO_KINDS and d["metadata"]["namespace"] == NAMESPACE],
        provider=provider["envoyExtAuthzHttp"],
        protected=render_protected_tool(istio["data"]["protected-workload-patch.yaml"]),
    )


@pytest.fixture
def topology(rendered: Topology) -> Topology:
    return copy.deepcopy(rendered)


# -- reading the documents -----------------------------------------------------------------------
def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def sidecar_deployment(t: Topology) -> Doc:
    (deployment,) = [d for d in of_kind(t.docs, "Deployment") if "authz-sidecar" in containers(d)]
    return deployment


def containers(deployment: Doc) -> dict[str, Doc]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def sidecar_config_map(t: Topology) -> Doc:
    found = config_map(t.docs, "sidecar.yaml")
    assert found is not None
    return found


def fake_secrets(seed: str) -> Secrets:
    """Stand-ins for the Secrets created at install: a value per (seed, Secret, key), URL-safe hex."""
    return lambda name, key: hashlib.sha256(f"{seed}/{name}/{key}".encode()).hexdigest()[:32]


def container_env(deployment: Doc, container: Doc, secrets: Secrets) -> dict[str, str]:
    """The container's environment as the kubelet builds it: in order, ``$(VAR)`` expanded from the
    variables defined before it, Secret keys from ``secrets``."""
    fields = {
        "metadata.namespace": deployment["metadata"].get("namespace", NAMESPACE),
        "spec.serviceAccountName": deployment["spec"]["template"]["spec"].get("serviceAccountName", "default"),
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets(ref["name"], ref["key"])
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            pytest.fail(f"env {item['name']}: source not modelled")
    return env


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def effective_config(t: Topology, secrets: Secrets, tmp: Path) -> Config:
    """The sidecar's config as a replica loads it: the ConfigMap's file plus its AUTHZ_* environment."""
    deployment = sidecar_deployment(t)
    path = tmp / "sidecar.yaml"
    path.write_text(sidecar_config_map(t)["data"]["sidecar.yaml"])
    return load_config(path, container_env(deployment, containers(deployment)["authz-sidecar"], secrets))


def mounted_volume(deployment: Doc, container: str, mount_path: Path) -> tuple[Doc, Doc]:
    """The (volumeMount, volume) of ``container`` mounted exactly at ``mount_path``."""
    mounts = [
        m for m in containers(deployment)[container].get("volumeMounts", []) if Path(m["mountPath"]) == mount_path
    ]
    assert len(mounts) == 1, f"{container}: nothing (or several) mounted at {mount_path}"
    volumes = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1
    return mounts[0], volumes[0]


def server_args(container: Doc, env: dict[str, str]) -> list[str]:
    return [expand(a, env) for a in container.get("command", []) + container.get("args", [])]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def redis_server(t: Topology, config: Config) -> tuple[Doc, Doc]:
    """The (Deployment, container) the sidecar's state.redis_url leads to, through its Service."""
    url = urlsplit(config.state.redis_url)
    assert url.scheme in {"redis", "rediss"} and url.hostname, config.state.redis_url
    name, _, rest = url.hostname.partition(".")
    assert rest in {"", NAMESPACE, f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"}, url.hostname
    service = named(t.docs, "Service", name)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 6379)]
    selector = service["spec"]["selector"].items()
    (deployment,) = [d for d in of_kind(t.docs, "Deployment") if selector <= pod_labels(d).items()]
    serving = [
        c
        for c in containers(deployment).values()
        if any(port["targetPort"] in (p.get("name"), p["containerPort"]) for p in c.get("ports", []))
    ]
    assert len(serving) == 1, f"Service {name} port {port} reaches no container"
    assert {"redis-server", "valkey-server"} & {Path(a).name for a in server_args(serving[0], {})}, serving[0]
    return deployment, serving[0]


# -- the sidecar's routes -----------------------------------------------------------------------
def sidecar_routes(config_text: str) -> tuple[str, list[tuple[str, str]]]:
    """(check path prefix, [(method, path)]) the sidecar serves on its HTTP listener with this
    config, from its own aiohttp app (file-backed settings dropped: only the routes matter)."""
    from sidecar.server import build_apps, build_components

    config = validate_config(yaml.safe_load(config_text))
    assert getattr(config.listen, "socket", None) is None, "the mesh reaches the check over TCP only"
    config = config.model_copy(
        update={
            "state": StateConfig(),
            "credentials": CredentialsConfig(),
            "identity": config.identity.model_copy(update={"xfcc": XfccConfig()}),
        }
    )

    async def collect() -> list[tuple[str, str]]:
        parts = await build_components(config)
        try:
            apps = build_apps(config, parts)
            served = [app for i, app in enumerate(apps) if i != 1 and app is not None]  # [1] is admin
            return sorted(
                {
                    (route.method, route.resource.canonical)
                    for app in served
                    for route in app.router.routes()
                    if route.resource is not None and route.method != "HEAD"
                }
            )
        finally:
            await parts.close()

    with pytest.MonkeyPatch.context() as env:
        env.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
        return config.listen.path_prefix, asyncio.run(collect())


@pytest.fixture(scope="module")
def routes(rendered: Topology) -> tuple[str, list[tuple[str, str]]]:
    return sidecar_routes(sidecar_config_map(rendered)["data"]["sidecar.yaml"])


def requests_of(routes: tuple[str, list[tuple[str, str]]]) -> Iterator[tuple[str, str, set[str]]]:
    """(method, a concrete path, its kinds) for every route; ``*`` routes (the check) as GET and POST."""
    prefix, served = routes
    for method, canonical in served:
        path = re.sub(r"\{[^}]+\}", "sample-id", canonical)
        for concrete in ["GET", "POST"] if method == "*" else [method]:
            yield concrete, path, route_kinds(prefix, concrete, path)


def route_kinds(prefix: str, method: str, path: str) -> set[str]:
    if path == prefix or path.startswith(prefix + "/"):
        return {"check"}
    if path == JWKS_PATH:
        return {"jwks"}
    if path == "/v1/tasks" or path.startswith("/v1/tasks/"):
        return {"tasks"}
    if path.startswith("/access/v1/") or path == "/.well-known/authzen-configuration":
        return {"authzen"}  # no caller by default: a team allows its PEPs (docs/authzen.md)
    if path == "/v1/approvals" or path.startswith("/v1/approvals/"):
        single = method == "GET" and path.count("/") == 3  # GET /v1/approvals/<id>: the agent's poll
        return {"approvals", "approval-status"} if single else {"approvals"}
    pytest.fail(f"{method} {path} is not in the access table (ACCESS): decide who may reach it")


# -- Istio's evaluation of authz-system-mesh.yaml --------------------------------------------------
def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if set(selector) - {"matchLabels"}:
        pytest.fail(f"selector {selector} not modelled")
    return dict(selector.get("matchLabels") or {}).items() <= labels.items()


def istio_match(patterns: list[str], value: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
        if pattern.startswith("*") and value.endswith(pattern[1:]):
            return True
    return False


def mtls_mode(t: Topology, labels: dict[str, str], port: int) -> str:
    modes = [
        d["spec"]
        for d in of_kind(t.mesh, "PeerAuthentication")
        if d["metadata"]["namespace"] == NAMESPACE and selects(d["spec"].get("selector"), labels)
    ]
    if not modes:
        return "PERMISSIVE"  # the mesh's default
    assert len(modes) == 1, "several PeerAuthentications select the pod"
    port_level = {int(k): v["mode"] for k, v in modes[0].get("portLevelMtls", {}).items()}
    return str(port_level.get(port, modes[0].get("mtls", {}).get("mode", "PERMISSIVE")))


def rule_matches(rule: Doc, caller: Caller, port: int, method: str, path: str) -> bool:
    if set(rule) - {"from", "to"}:
        pytest.fail(f"rule fields {sorted(set(rule) - {'from', 'to'})} not modelled")
    sources = [f["source"] for f in rule.get("from", [])]
    operations = [t["operation"] for t in rule.get("to", [])]

    def source_ok(source: Doc) -> bool:
        if set(source) - {"namespaces", "principals"}:
            pytest.fail(f"source fields {sorted(source)} not modelled")
        if caller.principal is None:
            return False  # plaintext: no verified namespace or principal
        return all(
            (
                "namespaces" not in source or istio_match(source["namespaces"], caller.namespace),
                "principals" not in source or istio_match(source["principals"], caller.principal),
            )
        )

    def operation_ok(operation: Doc) -> bool:
        if set(operation) - {"ports", "methods", "paths"}:
            pytest.fail(f"operation fields {sorted(operation)} not modelled")
        return all(
            (
                "ports" not in operation or str(port) in [str(p) for p in operation["ports"]],
                "methods" not in operation or istio_match(operation["methods"], method),
                "paths" not in operation or istio_match(operation["paths"], path),
            )
        )

    return (not sources or any(map(source_ok, sources))) and (not operations or any(map(operation_ok, operations)))


def mesh_allows(t: Topology, caller: Caller, port: int, method: str, path: str) -> bool:
    labels = pod_labels(sidecar_deployment(t))
    if labels.get("sidecar.istio.io/inject") != "true":
        return True  # no istio-proxy in the pod: no mesh policy is enforced
    if caller.principal is None and mtls_mode(t, labels, port) == "STRICT":
        return False
    policies = [
        d["spec"]
        for d in of_kind(t.mesh, "AuthorizationPolicy")
        if d["metadata"]["namespace"] == NAMESPACE and selects(d["spec"].get("selector"), labels)
    ]
    by_action: dict[str, list[Doc]] = {}
    for spec in policies:
        by_action.setdefault(spec.get("action", "ALLOW"), []).append(spec)
    assert set(by_action) <= {"ALLOW", "DENY"}, f"actions {sorted(by_action)} not modelled"
    matching = [
        action
        for action, specs in by_action.items()
        for spec in specs
        if any(rule_matches(rule, caller, port, method, path) for rule in spec.get("rules", []))
    ]
    if "DENY" in matching:
        return False
    return "ALLOW" in matching or "ALLOW" not in by_action


# -- Kubernetes' evaluation of the NetworkPolicies --------------------------------------------------
def peer_matches(peer: Doc, policy_namespace: str, namespace: str, labels: dict[str, str]) -> bool:
    if set(peer) - {"namespaceSelector", "podSelector"}:
        pytest.fail(f"peer {peer} not modelled")
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), labels)


def port_matches(ports: list[Doc] | None, port: int) -> bool:
    return ports is None or any(p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port) for p in ports)


def network_allows(docs: list[Doc], source: Caller, destination: Caller, port: int) -> bool:
    """Egress from ``source`` and ingress to ``destination`` on a TCP port, as NetworkPolicies decide
    (only the policies in ``docs``; pods no policy selects are unrestricted in that direction)."""

    def direction(pod: Caller, peer: Caller, kind: str, field: str, peers: str) -> bool:
        policies = [
            p
            for p in of_kind(docs, "NetworkPolicy")
            if p["metadata"].get("namespace", NAMESPACE) == pod.namespace
            and selects(p["spec"]["podSelector"], pod.labels)
            and kind in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not policies:
            return True
        return any(
            port_matches(rule.get("ports"), port)
            and (
                peers not in rule
                or any(peer_matches(x, pod.namespace, peer.namespace, peer.labels) for x in rule[peers])
            )
            for policy in policies
            for rule in policy["spec"].get(field) or []
        )

    return direction(source, destination, "Egress", "egress", "to") and direction(
        destination, source, "Ingress", "ingress", "from"
    )


def sidecar_pod(t: Topology) -> Caller:
    return Caller(NAMESPACE, pod_labels(sidecar_deployment(t)), None)


def reaches(t: Topology, caller: Caller, port: int, method: str, path: str) -> bool:
    """Whether ``caller`` gets a request through to the sidecar's own code."""
    return network_allows(t.docs, caller, sidecar_pod(t), port) and mesh_allows(t, caller, port, method, path)


# -- the checks ----------------------------------------------------------------------------------
def replicas(t: Topology, deployment: Doc) -> int:
    """The fewest replicas the Deployment runs: its HorizontalPodAutoscaler's minimum, if any."""
    scalers = [
        h["spec"]
        for h in of_kind(t.docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ]
    return int(scalers[0]["minReplicas"]) if scalers else int(deployment["spec"].get("replicas", 1))


def check_replicas_share_redis(t: Topology, tmp: Path) -> None:
    deployment = sidecar_deployment(t)
    assert replicas(t, deployment) >= 2, "the point of the shared store: several replicas"
    config = effective_config(t, fake_secrets("a"), tmp)
    assert config.state.backend == "redis", "replicas on in-memory state: tasks and limits differ per replica"
    redis, _ = redis_server(t, config)
    assert redis["spec"].get("replicas", 1) == 1, "one store, not one per replica"


def check_redis_password_from_secret(t: Topology, tmp: Path) -> None:
    passwords = set()
    for seed in ("install-1", "install-2"):  # two installs with different Secrets
        secrets = fake_secrets(seed)
        config = effective_config(t, secrets, tmp)
        redis, server = redis_server(t, config)
        required = option(server_args(server, container_env(redis, server, secrets)), "--requirepass")
        assert required, "the Redis server requires no password"
        assert urlsplit(config.state.redis_url).password is None, "a password in the URL is in the ConfigMap"
        file = config.state.redis_password_file
        assert file is not None, "the sidecar has no password for its store"
        mount, volume = mounted_volume(sidecar_deployment(t), "authz-sidecar", file.parent)
        assert mount.get("readOnly") is True and "secret" in volume, f"the password comes from {volume}"
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        password = secrets(volume["secret"]["secretName"], items.get(file.name, file.name))
        assert password == required, "the sidecar's password is not the server's"
        passwords.add(password)
    assert len(passwords) == 2, "the password does not come from a Secret: it is the same whatever the Secret holds"


SECRET_TEXT = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"requirepass\s+\S"),
    re.compile(r"[a-z]+://[^/@\s:]*:(?!\$\()[^/@\s]+@"),  # a URL with a literal password
]


def check_no_secret_in_git(t: Topology) -> None:
    for docs in (t.docs, t.mesh, t.protected):
        assert not of_kind(docs, "Secret"), "Secrets are created at install, never rendered from git"
    for holder in of_kind(t.docs, "ConfigMap"):
        for key, text in holder.get("data", {}).items():
            for pattern in SECRET_TEXT:
                assert not pattern.search(text), f"ConfigMap {holder['metadata']['name']}/{key}: {pattern.pattern}"
    for deployment in of_kind(t.docs, "Deployment") + of_kind(t.protected, "Deployment"):
        for container in containers(deployment).values():
            literal = [e["value"] for e in container.get("env", []) if "value" in e]
            for text in literal + container.get("command", []) + container.get("args", []):
                assert not any(p.search(text) for p in SECRET_TEXT), (container["name"], text)
            required = option(container.get("args", []), "--requirepass")
            assert required is None or re.fullmatch(r"\$\(\w+\)", required), "a literal Redis password"
    for name, value in t.provider.get("includeAdditionalHeadersInCheck", {}).items():
        assert re.fullmatch(r"%ENVIRONMENT\(\w+\)%", value), f"mesh config header {name}: a literal value"
    # Every Secret the pods need is one the README tells the installer to create.
    documented = set(re.findall(r"create secret generic ([a-z0-9-]+)", INSTALL_DOC.read_text()))
    for deployment in of_kind(t.docs, "Deployment") + of_kind(t.protected, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        used = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        used |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in containers(deployment).values()
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert used <= documented, f"{deployment['metadata']['name']}: no install step for {used - documented}"


def check_xfcc_secret_from_secret(t: Topology, tmp: Path) -> None:
    config = effective_config(t, fake_secrets("a"), tmp)
    secret_file = config.identity.xfcc.trusted_secret_file
    assert "xfcc" in config.identity.sources and secret_file is not None
    mount, volume = mounted_volume(sidecar_deployment(t), "authz-sidecar", secret_file.parent)
    assert mount.get("readOnly") is True and "secret" in volume, f"the XFCC secret comes from {volume}"
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    secret_name, secret_key = volume["secret"]["secretName"], items.get(secret_file.name, secret_file.name)
    # The proxies add the same value: from their environment, which comes from the same Secret key.
    value = t.provider.get("includeAdditionalHeadersInCheck", {}).get(config.identity.xfcc.secret_header, "")
    found = re.fullmatch(r"%ENVIRONMENT\((\w+)\)%", value)
    assert found, f"the mesh's proxies add {config.identity.xfcc.secret_header}: {value!r}"
    (tool,) = of_kind(t.protected, "Deployment")
    proxy = containers(tool).get("istio-proxy", {})
    assert proxy.get("image") == "auto", "protected-workload-patch.yaml must customise the injected istio-proxy"
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in proxy.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs.get(found.group(1)) == {"name": secret_name, "key": secret_key}, refs
    assert not any("secret" in v for v in tool["spec"]["template"]["spec"].get("volumes", [])), (
        "the tool's own containers must not mount it"
    )


def check_signing_keys_shared(t: Topology, tmp: Path) -> None:
    config = effective_config(t, fake_secrets("a"), tmp)
    keys_dir = config.credentials.keys_dir
    assert keys_dir is not None, "without credentials.keys_dir every replica signs with a key of its own"
    mount, volume = mounted_volume(sidecar_deployment(t), "authz-sidecar", keys_dir)
    assert mount.get("readOnly") is True
    assert set(volume) == {"name", "secret"} and volume["secret"]["secretName"], f"signing keys from {volume}"


def check_agent_headers_forwarded(t: Topology, tmp: Path) -> None:
    config = effective_config(t, fake_secrets("a"), tmp)
    wanted = {
        config.tasks.token_header,
        config.approvals.header,
        PURPOSE_HEADER,
        CONFIDENCE_HEADER,
        "authorization",
        "x-forwarded-client-cert",
    }
    forwarded = [h.lower() for h in t.provider.get("includeRequestHeadersInCheck", [])]
    missing = sorted(h for h in wanted if not istio_match(forwarded, h))
    assert not missing, f"the check never sees {missing}"


def check_api_access(t: Topology, routes: tuple[str, list[tuple[str, str]]]) -> None:
    port = validate_config(yaml.safe_load(sidecar_config_map(t)["data"]["sidecar.yaml"])).listen.port
    wrong = []
    for method, path, kinds in requests_of(routes):
        for caller, allowed in ACCESS:
            if reaches(t, caller, port, method, path) != bool(kinds & allowed):
                wrong.append(f"{caller.namespace}/{caller.principal or 'plaintext'} {method} {path}")
    assert not wrong, "reachability differs from the access table:\n  " + "\n  ".join(wrong)
    # The admin and OPA diagnostic ports: Prometheus only.
    for admin_port in (9192, 8282):
        assert reaches(t, MONITORING, admin_port, "GET", "/metrics")
        assert not reaches(t, TOOL_PROXY, admin_port, "GET", "/metrics")


def check_jwks_reachable(t: Topology, routes: tuple[str, list[tuple[str, str]]]) -> None:
    assert ("GET", JWKS_PATH) in routes[1], "the sidecar no longer serves its JWKS there"
    listen = validate_config(yaml.safe_load(sidecar_config_map(t)["data"]["sidecar.yaml"])).listen.port
    service = named(t.docs, "Service", "authz-sidecar")
    sidecar = containers(sidecar_deployment(t))["authz-sidecar"]
    named_ports = {p.get("name"): p["containerPort"] for p in sidecar["ports"]}
    exposed = [p for p in service["spec"]["ports"] if named_ports.get(p["targetPort"], p["targetPort"]) == listen]
    assert exposed, "no Service port reaches the sidecar's HTTP listener"
    assert reaches(t, TOOL_PROXY, listen, "GET", JWKS_PATH), "upstreams in tools cannot fetch the JWKS"
    assert not reaches(t, TOOL_PROXY, listen, "POST", "/v1/tasks"), "the task API must stay closed to tools"


def check_one_xfcc_element(t: Topology) -> None:
    labels = pod_labels(sidecar_deployment(t))
    port = validate_config(yaml.safe_load(sidecar_config_map(t)["data"]["sidecar.yaml"])).listen.port
    settings = [
        patch["patch"]["value"]["typed_config"].get("forward_client_cert_details")
        for envoy_filter in of_kind(t.mesh, "EnvoyFilter")
        if envoy_filter["metadata"]["namespace"] == NAMESPACE
        and selects({"matchLabels": envoy_filter["spec"].get("workloadSelector", {}).get("labels", {})}, labels)
        for patch in envoy_filter["spec"]["configPatches"]
        if patch["applyTo"] == "NETWORK_FILTER"
        and patch["match"]["context"] == "SIDECAR_INBOUND"
        and patch["match"]["listener"].get("portNumber") in (None, port)
        and patch["patch"]["operation"] == "MERGE"
    ]
    assert settings == ["FORWARD_ONLY"], "istiod's APPEND_FORWARD adds a second XFCC element: every check is a 401"


def check_redis_only_for_the_sidecar(t: Topology, tmp: Path) -> None:
    redis, _ = redis_server(t, effective_config(t, fake_secrets("a"), tmp))
    store = Caller(NAMESPACE, pod_labels(redis), None)
    assert network_allows(t.docs, sidecar_pod(t), store, 6379), "the sidecar cannot reach its store"
    bundles = Caller(NAMESPACE, {"app.kubernetes.io/name": "authz-bundles"}, None)
    for caller in (TOOL_PROXY, AGENT, OTHER, bundles):
        assert not network_allows(t.docs, caller, store, 6379), f"{caller} reaches Redis"


# -- tests ---------------------------------------------------------------------------------------
def test_the_replicas_share_one_redis(topology: Topology, tmp_path: Path) -> None:
    check_replicas_share_redis(topology, tmp_path)


def test_redis_requires_the_password_from_a_secret(topology: Topology, tmp_path: Path) -> None:
    check_redis_password_from_secret(topology, tmp_path)


def test_redis_is_reachable_only_by_the_sidecar(topology: Topology, tmp_path: Path) -> None:
    check_redis_only_for_the_sidecar(topology, tmp_path)


def test_no_secret_value_is_in_git(topology: Topology) -> None:
    check_no_secret_in_git(topology)


def test_the_xfcc_secret_comes_from_a_secret(topology: Topology, tmp_path: Path) -> None:
    check_xfcc_secret_from_secret(topology, tmp_path)


def test_the_replicas_sign_with_keys_from_one_secret(topology: Topology, tmp_path: Path) -> None:
    check_signing_keys_shared(topology, tmp_path)


def test_the_check_sees_the_agent_headers(topology: Topology, tmp_path: Path) -> None:
    check_agent_headers_forwarded(topology, tmp_path)


def test_each_caller_reaches_only_its_paths(topology: Topology, routes: tuple[str, list[tuple[str, str]]]) -> None:
    check_api_access(topology, routes)


def test_upstreams_reach_the_jwks(topology: Topology, routes: tuple[str, list[tuple[str, str]]]) -> None:
    check_jwks_reachable(topology, routes)


def test_the_check_keeps_one_xfcc_element(topology: Topology) -> None:
    check_one_xfcc_element(topology)


def test_the_istio_documents_validate(topology: Topology) -> None:
    """The patched protected tool validates (the istio-proxy container merged into it); the mesh
    policy documents have the shape this model reads."""
    for doc in topology.protected:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted(d["kind"] for d in topology.mesh)
    assert kinds == ["AuthorizationPolicy", "EnvoyFilter", "PeerAuthentication"], kinds
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in topology.mesh)


# -- every check can fail ------------------------------------------------------------------------
def _config_edit(edit: Callable[[Doc], None]) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        config_map = sidecar_config_map(t)
        raw = yaml.safe_load(config_map["data"]["sidecar.yaml"])
        edit(raw)
        config_map["data"]["sidecar.yaml"] = yaml.safe_dump(raw)

    return apply


def _volume(name: str, replacement: Doc) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        volumes = sidecar_deployment(t)["spec"]["template"]["spec"]["volumes"]
        volume = next(v for v in volumes if v["name"] == name)
        volume.clear()
        volume.update({"name": name, **replacement})

    return apply


def _allow(rule: Doc) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        next(d for d in t.mesh if d["kind"] == "AuthorizationPolicy")["spec"]["rules"].append(rule)

    return apply


def _drop_rule(path: str) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        spec = next(d for d in t.mesh if d["kind"] == "AuthorizationPolicy")["spec"]
        spec["rules"] = [r for r in spec["rules"] if path not in str(r)]

    return apply


def _drop(kind: str, name: str | None = None) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        for docs in (t.docs, t.mesh):
            docs[:] = [d for d in docs if not (d["kind"] == kind and name in (None, d["metadata"]["name"]))]

    return apply


def _redis_args(edit: Callable[[list[str]], list[str]]) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        server = containers(named(t.docs, "Deployment", "authz-sidecar-redis"))["redis"]
        server["args"] = edit(server["args"])

    return apply


def _no_requirepass(args: list[str]) -> list[str]:
    i = args.index("--requirepass")
    return args[:i] + args[i + 2 :]


def _literal_requirepass(args: list[str]) -> list[str]:
    return [("hunter2hunter2" if a == "$(REDIS_PASSWORD)" else a) for a in args]


def _set_provider_header(t: Topology) -> None:
    t.provider["includeAdditionalHeadersInCheck"]["x-authz-xfcc-secret"] = "REPLACE-with-the-authz-xfcc-secret"


def _forward_only(headers: list[str]) -> Callable[[Topology], None]:
    def apply(t: Topology) -> None:
        t.provider["includeRequestHeadersInCheck"] = headers

    return apply


def _not_injected(t: Topology) -> None:
    del pod_labels(sidecar_deployment(t))["sidecar.istio.io/inject"]


def _one_replica_is_enough(t: Topology) -> None:
    t.docs[:] = [d for d in t.docs if d["kind"] != "HorizontalPodAutoscaler"]
    sidecar_deployment(t)["spec"]["replicas"] = 1


def _no_egress_to_redis(t: Topology) -> None:
    policy = named(t.docs, "NetworkPolicy", "authz-sidecar")
    policy["spec"]["egress"] = [r for r in policy["spec"]["egress"] if "authz-sidecar-redis" not in str(r)]


def _literal_redis_url(c: Doc) -> None:
    c["state"]["redis_url"] = "redis://:hunter2hunter2@authz-sidecar-redis:6379/0"
    c["state"].pop("redis_password_file")


def _add_secret(t: Topology) -> None:
    t.docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "authz-xfcc-secret"}, "data": {}})


def _key_in_config_map(t: Topology) -> None:
    sidecar_config_map(t)["data"]["key.pem"] = "-----BEGIN EC PRIVATE KEY-----\n...\n"


def _proxy_without_secret(t: Topology) -> None:
    (tool,) = of_kind(t.protected, "Deployment")
    containers(tool)["istio-proxy"]["env"] = []


def _permissive(t: Topology) -> None:
    next(d for d in t.mesh if d["kind"] == "PeerAuthentication")["spec"]["mtls"]["mode"] = "PERMISSIVE"
    _allow({"to": [{"operation": {"paths": ["/authz/*"]}}]})(t)  # plaintext callers now match a rule


def _open_to_every_namespace(t: Topology) -> None:
    policy = named(t.docs, "NetworkPolicy", "authz-sidecar")
    policy["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]
    _allow({"from": [{"source": {"namespaces": ["*"]}}], "to": [{"operation": {"paths": ["/authz/*"]}}]})(t)


CHECKS: dict[str, Callable[..., None]] = {
    "replicas_share_redis": check_replicas_share_redis,
    "redis_password": check_redis_password_from_secret,
    "redis_network": check_redis_only_for_the_sidecar,
    "no_secret_in_git": check_no_secret_in_git,
    "xfcc_secret": check_xfcc_secret_from_secret,
    "signing_keys": check_signing_keys_shared,
    "agent_headers": check_agent_headers_forwarded,
    "api_access": check_api_access,
    "jwks": check_jwks_reachable,
    "one_xfcc_element": check_one_xfcc_element,
}
REVERTS: list[tuple[str, str, Callable[[Topology], None]]] = [
    ("replicas_share_redis", "state in memory", _config_edit(lambda c: c.update(state={"backend": "memory"}))),
    ("replicas_share_redis", "one replica", _one_replica_is_enough),
    ("replicas_share_redis", "no Redis component", _drop("Service", "authz-sidecar-redis")),
    ("redis_password", "literal URL", _config_edit(_literal_redis_url)),
    ("redis_password", "password from a ConfigMap", _volume("redis-password", {"configMap": {"name": "x"}})),
    ("redis_password", "server without a password", _redis_args(_no_requirepass)),
    ("redis_network", "no Redis NetworkPolicy", _drop("NetworkPolicy", "authz-sidecar-redis")),
    ("redis_network", "no egress to Redis", _no_egress_to_redis),
    ("no_secret_in_git", "literal in the mesh config", _set_provider_header),
    ("no_secret_in_git", "a Secret in the render", _add_secret),
    ("no_secret_in_git", "a key in a ConfigMap", _key_in_config_map),
    ("no_secret_in_git", "password in a URL", _config_edit(_literal_redis_url)),
    ("no_secret_in_git", "literal requirepass", _redis_args(_literal_requirepass)),
    ("xfcc_secret", "from a ConfigMap", _volume("xfcc-secret", {"configMap": {"name": "authz-xfcc"}})),
    ("xfcc_secret", "literal in the mesh config", _set_provider_header),
    ("xfcc_secret", "proxies without the Secret", _proxy_without_secret),
    ("signing_keys", "no keys_dir", _config_edit(lambda c: c.pop("credentials"))),
    ("signing_keys", "keys in an emptyDir", _volume("signing-keys", {"emptyDir": {}})),
    ("agent_headers", "no x-agent-*", _forward_only(["authorization", "x-forwarded-client-cert", "x-authz-*"])),
    ("api_access", "tools reach /v1", _allow({"from": [{"source": {"namespaces": ["tools"]}}]})),
    ("api_access", "not in the mesh", _not_injected),
    ("api_access", "no AuthorizationPolicy", _drop("AuthorizationPolicy")),
    ("api_access", "plaintext accepted", _permissive),
    ("api_access", "every namespace", _open_to_every_namespace),
    ("api_access", "approvers shut out", _drop_rule("istio-ingressgateway-service-account")),
    ("jwks", "no JWKS rule", _drop_rule(JWKS_PATH)),
    ("jwks", "tools reach /v1", _allow({"from": [{"source": {"namespaces": ["tools"]}}]})),
    ("one_xfcc_element", "no EnvoyFilter", _drop("EnvoyFilter")),
]


@pytest.mark.parametrize(("check", "change", "revert"), REVERTS, ids=[f"{c}:{n}" for c, n, _ in REVERTS])
def test_the_checks_can_fail(
    rendered: Topology,
    routes: tuple[str, list[tuple[str, str]]],
    tmp_path: Path,
    check: str,
    change: str,
    revert: Callable[[Topology], None],
) -> None:
    function = CHECKS[check]
    arguments = function.__code__.co_varnames[: function.__code__.co_argcount]

    def run(t: Topology) -> None:
        extra = {"tmp": tmp_path, "routes": routes}
        function(t, *[extra[a] for a in arguments[1:]])

    run(copy.deepcopy(rendered))  # passes as shipped
    broken = copy.deepcopy(rendered)
    revert(broken)
    with pytest.raises(AssertionError):
        run(broken)


def test_every_check_has_a_revert() -> None:
    assert {c for c, _, _ in REVERTS} == set(CHECKS)
