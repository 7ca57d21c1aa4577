"""kubernetes/: every overlay renders, every object validates, the security invariants hold.

Rendering uses the real ``kustomize`` (built by ./taskw; ``kubectl kustomize`` as a fallback),
validation the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate`` (offline). Custom
resources (ServiceMonitor, AuthorizationPolicy, IstioOperator, ClusterSPIFFEID) have no bundled
schema: they are checked against the fields of their CRDs that these manifests use. The Envoy
configs inside the ConfigMaps are validated by Envoy itself, the sidecar configs by the sidecar's
own loader.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devstack.tools import ToolMissing, find_tool
from sidecar.config import load_config

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "kubernetes"
OVERLAYS = ["overlays/egress", "overlays/ingress", "overlays/istio", "services", "spire"]
K8S_VERSION = "1.33"
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip
TRIO = {"envoy", "authz-sidecar", "opa"}
SVID_CONTAINERS = {"envoy", "authz-sidecar"}  # the only containers SPIRE issues SVIDs to (kubernetes/spire)


def kustomize(path: Path) -> list[dict[str, Any]]:
    try:
        argv = [find_tool("kustomize"), "build", str(path)]
    except ToolMissing:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.fail("kustomize is missing: run the tests through ./taskw, which builds it into .tools/bin")
        argv = [kubectl, "kustomize", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(KUBE / request.param)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def config_map(docs: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    found = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) <= 1
    return found[0] if found else None


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in of_kind(docs, "Deployment")]


# -- schemas -------------------------------------------------------------------------------
CUSTOM: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            },
                        },
                    },
                },
            }
        },
    },
    ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["spiffeIDTemplate"],
                "additionalProperties": False,
                "properties": {
                    "spiffeIDTemplate": {"type": "string", "pattern": "^spiffe://"},
                    "podSelector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                    "workloadSelectorTemplates": {"type": "array", "items": {"type": "string", "pattern": "^k8s:"}},
                },
            }
        },
    },
}


def test_every_object_validates_against_the_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    import jsonschema

    _, docs = rendered
    assert docs
    for doc in docs:
        custom = CUSTOM.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            jsonschema.validate(doc, custom)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail() -> None:
    deployment = of_kind(kustomize(KUBE / "overlays/egress"), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# -- restricted PodSecurity --------------------------------------------------------------------
def test_restricted_pod_security(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for namespace in of_kind(docs, "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), (name, flag)
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, (name, volume)
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser", 1) != 0, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert container.get("ports") is None or all("hostPort" not in p for p in container["ports"]), where
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("cpu") and resources.get("requests", {}).get("memory"), where
            assert resources.get("limits", {}).get("memory"), where


def test_spiffe_csi_volume_is_read_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for name, spec in pod_specs(docs):
        containers = {c["name"] for c in spec["containers"]}
        csi = [v for v in spec.get("volumes", []) if "csi" in v]
        if not containers & {"authz-sidecar", "envoy"}:
            assert not csi, name
            continue
        assert len(csi) == 1, name
        assert csi[0]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}, name
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] == csi[0]["name"]:
                    assert mount.get("readOnly") is True, (name, container["name"])
        sidecar = next(c for c in spec["containers"] if c["name"] == "authz-sidecar")
        env = {e["name"]: e.get("value") for e in sidecar.get("env", [])}
        socket = env["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
        mount = next(m for m in sidecar["volumeMounts"] if m["name"] == csi[0]["name"])
        assert Path(socket).parent == Path(mount["mountPath"]), (overlay, socket)


# -- who can get an SVID ----------------------------------------------------------------------
def reaches_workload_api(container: dict[str, Any], csi_volumes: set[str]) -> bool:
    mounts = container.get("volumeMounts", [])
    return any(m["name"] in csi_volumes or m["mountPath"].startswith("/run/spiffe") for m in mounts) or any(
        e["name"] == "SPIFFE_ENDPOINT_SOCKET" for e in container.get("env", [])
    )


def test_only_envoy_and_the_sidecar_reach_the_workload_api(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The agent (or tool) container has no way to the Workload API socket, so no SVID: no credential
    a tool accepts except through Envoy. Only envoy and authz-sidecar mount the SPIFFE CSI volume."""
    overlay, docs = rendered
    checked = set()
    for name, spec in pod_specs(docs):
        # With a shared PID namespace /proc/<pid>/root would open the other containers' mounts.
        assert not spec.get("shareProcessNamespace"), name
        csi = {v["name"] for v in spec.get("volumes", []) if "csi" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{overlay}: {name}/{container['name']}"
            wanted = bool(csi) and container["name"] in SVID_CONTAINERS
            assert reaches_workload_api(container, csi) is wanted, where
            checked.add(container["name"])
    if overlay in {"overlays/egress", "overlays/ingress"}:
        assert checked - TRIO, "the agent's or tool's container was checked too"


def registered_containers(registration: dict[str, Any]) -> list[str]:
    """The container names a ClusterSPIFFEID's ``k8s:container-name`` selectors allow."""
    templates = registration["spec"].get("workloadSelectorTemplates", [])
    return [t.removeprefix("k8s:container-name:") for t in templates if t.startswith("k8s:container-name:")]


def test_spire_issues_svids_only_to_the_containers_that_mount_the_socket() -> None:
    registrations = of_kind(kustomize(KUBE / "spire"), "ClusterSPIFFEID")
    for registration in registrations:
        # Without exactly one container-name selector, every container of the pod gets the SVID.
        assert len(registered_containers(registration)) == 1, registration
    assert {n for r in registrations for n in registered_containers(r)} == SVID_CONTAINERS
    pods = 0
    for overlay in ("overlays/egress", "overlays/ingress", "overlays/istio"):
        for deployment in of_kind(kustomize(KUBE / overlay), "Deployment"):
            pod = deployment["spec"]["template"]
            csi = {v["name"] for v in pod["spec"].get("volumes", []) if "csi" in v}
            mounting = {c["name"] for c in pod["spec"]["containers"] if reaches_workload_api(c, csi)}
            labels = pod["metadata"]["labels"].items()
            selecting = [r for r in registrations if r["spec"]["podSelector"]["matchLabels"].items() <= labels]
            registered = {n for r in selecting for n in registered_containers(r)}
            assert mounting <= registered, (overlay, deployment["metadata"]["name"])
            pods += bool(mounting)
    assert pods >= 3, "the egress, ingress and istio pods reach the Workload API"


def container_env(deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's literal and downward-API environment, with ``$(VAR)`` references expanded."""
    pod = deployment["spec"]["template"]["spec"]
    fields = {
        "metadata.namespace": deployment["metadata"]["namespace"],
        "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def render_go_template(template: str, values: dict[str, str]) -> str:
    """``{{ .Field }}`` replaced by ``values[".Field"]`` (what ClusterSPIFFEID templates use here)."""
    return re.sub(r"\{\{\s*(\S+)\s*\}\}", lambda m: values[m.group(1)], template)


def test_the_pod_identity_is_the_spiffe_id_spire_registers(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """With the `pod` source the sidecar names the agent by the pod's SPIFFE ID: the one SPIRE issues
    to the pod's envoy (which presents it to tools) and authz-sidecar containers."""
    overlay, docs = rendered
    sidecar_cm = config_map(docs, "authz-sidecar")
    if sidecar_cm is None:
        return
    path = tmp_path / "sidecar.yaml"
    path.write_text(sidecar_cm["data"]["sidecar.yaml"])
    registrations = of_kind(kustomize(KUBE / "spire"), "ClusterSPIFFEID")
    pods_named = 0
    for deployment in of_kind(docs, "Deployment"):
        containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
        if "authz-sidecar" not in containers:
            continue
        config = load_config(path, environ=container_env(deployment, containers["authz-sidecar"]))
        if "pod" not in config.identity.sources:
            continue
        values = {
            ".TrustDomain": config.identity.trust_domains[0],
            ".PodMeta.Namespace": deployment["metadata"]["namespace"],
            ".PodSpec.ServiceAccountName": deployment["spec"]["template"]["spec"].get("serviceAccountName", "default"),
        }
        for registration in registrations:
            registered = render_go_template(registration["spec"]["spiffeIDTemplate"], values)
            assert config.identity.pod.spiffe_id == registered, (overlay, deployment["metadata"]["name"])
        pods_named += 1
    if overlay == "overlays/egress":
        assert pods_named, "the egress sidecar names the agent by the pod's SPIFFE ID"


# -- the trio ---------------------------------------------------------------------------------
def test_trio_probes_and_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        containers = {c["name"]: c for c in spec["containers"]}
        if "authz-sidecar" not in containers:
            continue
        assert TRIO - {"envoy"} <= set(containers), name
        sidecar = containers["authz-sidecar"]
        admin = next(p for p in sidecar["ports"] if p["name"] == "authz-admin")
        assert admin["containerPort"] == 9192
        assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "authz-admin"}
        assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "authz-admin"}
        opa = containers["opa"]
        assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles", "OPA is ready only with a bundle"
        assert "--addr=unix:///run/authz/opa.sock" in opa["args"], "OPA's API is a socket in the trio's volume"
        assert not any(a.startswith("--addr=") and "unix://" not in a for a in opa["args"]), "no TCP API"
        if "envoy" in containers:
            assert containers["envoy"]["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_envoy_never_fails_open_and_validates(rendered: tuple[str, list[dict[str, Any]]], envoy_bin: str) -> None:
    _, docs = rendered
    envoy = config_map(docs, "authz-envoy")
    if envoy is None:
        assert not any(c["name"] == "envoy" for _, s in pod_specs(docs) for c in s["containers"])
        return
    config = yaml.safe_load(envoy["data"]["envoy.yaml"])
    filters = list(_find(config, "envoy.filters.http.ext_authz"))
    assert filters, "every listener that forwards must ask the sidecar"
    for ext_authz in filters:
        typed = ext_authz["typed_config"]
        assert typed["failure_mode_allow"] is False
        assert typed["status_on_error"] == {"code": "ServiceUnavailable"}
        assert typed["http_service"]["path_prefix"] == "/authz"
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != "health":
            has_authz = any(_find(listener, "envoy.filters.http.ext_authz"))
            assert has_authz, f"listener {listener['name']} forwards without asking the sidecar"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTHZ_XFCC_SECRET", "validation-only-secret-value")
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"k8s-envoy-{os.getpid()}.yaml"
        path.write_text(envoy["data"]["envoy.yaml"])
        try:
            result = subprocess.run(
                [envoy_bin, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
            )
        finally:
            path.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def _find(node: Any, filter_name: str) -> Any:
    """Every HTTP filter entry named ``filter_name`` anywhere in an Envoy config."""
    if isinstance(node, dict):
        if node.get("name") == filter_name and "typed_config" in node:
            yield node
        for value in node.values():
            yield from _find(value, filter_name)
    elif isinstance(node, list):
        for value in node:
            yield from _find(value, filter_name)


def test_sidecar_config_loads_and_matches_the_pod(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, docs = rendered
    sidecar_cm = config_map(docs, "authz-sidecar")
    if sidecar_cm is None:  # only where no pod runs the sidecar (the shared services)
        assert not any(c["name"] == "authz-sidecar" for _, s in pod_specs(docs) for c in s["containers"])
        return
    path = tmp_path / "sidecar.yaml"
    path.write_text(sidecar_cm["data"]["sidecar.yaml"])
    config = load_config(path)  # the sidecar's own validation: unknown keys and bad values fail
    assert config.opa.url == "unix:///run/authz/opa.sock", "the sidecar asks OPA on its socket"
    for name, spec in pod_specs(docs):
        containers = {c["name"]: c for c in spec["containers"]}
        if "authz-sidecar" not in containers:
            continue
        mounts = {m["mountPath"]: m for m in containers["authz-sidecar"]["volumeMounts"]}
        secret_file = config.identity.xfcc.trusted_secret_file
        if "xfcc" in config.identity.sources:
            assert secret_file is not None and str(secret_file.parent) in mounts, name
        if "envoy" in containers:
            envoy = yaml.safe_load(config_map(docs, "authz-envoy")["data"]["envoy.yaml"])  # type: ignore[index]
            (check,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "authz_sidecar"]
            pipe = check["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
            assert str(config.listen.socket) == pipe["path"], "Envoy asks the sidecar's check socket"
            assert config.listen.host == "127.0.0.1", "the agent API stays pod-local"
            admin = envoy["admin"]["address"]["pipe"]["path"]
            assert config.listen.socket is not None and config.listen.socket.parent == RUN_DIR, name
            assert Path(admin).parent == config.listen.socket.parent, "Envoy's admin is a socket beside it"
        assert_run_dir_is_the_trios_only(name, spec)


RUN_DIR = Path("/run/authz")


def assert_run_dir_is_the_trios_only(name: str, spec: dict[str, Any]) -> None:
    """The trio's sockets live in a volume only the trio mounts: the agent or tool beside them
    shares the loopback, not this directory."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounting = {
        c["name"]
        for c in spec["containers"]
        for m in c.get("volumeMounts", [])
        if Path(m["mountPath"]) == RUN_DIR or RUN_DIR in Path(m["mountPath"]).parents
    }
    assert mounting <= TRIO and {"authz-sidecar", "opa"} <= mounting, (name, mounting)
    names = {
        m["name"] for c in spec["containers"] for m in c.get("volumeMounts", []) if Path(m["mountPath"]) == RUN_DIR
    }
    for volume in names:
        assert "emptyDir" in volumes[volume], (name, volume, "the run directory is the pod's own")
        users = {c["name"] for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == volume}
        assert users <= TRIO, (name, users)


def test_opa_pulls_signed_bundles_and_ships_decision_logs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    opa_cm = config_map(docs, "authz-opa")
    if opa_cm is None:  # only where no pod runs OPA (the shared services)
        assert not any(c["name"] == "opa" for _, s in pod_specs(docs) for c in s["containers"])
        return
    opa = yaml.safe_load(opa_cm["data"]["opa.yaml"])
    bundle = opa["bundles"]["authz"]
    assert bundle["service"] in opa["services"] and bundle["signing"]["keyid"] in opa["keys"]
    assert bundle["polling"]["min_delay_seconds"] > 0
    assert opa["decision_logs"]["service"] in opa["services"]
    assert opa["status"]["prometheus"] is True
    key_cm = config_map(docs, "authz-bundle-key")
    assert key_cm is not None
    for name, spec in pod_specs(docs):
        containers = {c["name"]: c for c in spec["containers"]}
        if "opa" not in containers:
            continue
        set_file = next(a for a in containers["opa"]["args"] if a.startswith("--set-file=keys."))
        key_path = Path(set_file.split("=", 2)[2])
        mount = next(m for m in containers["opa"]["volumeMounts"] if m["mountPath"] == str(key_path.parent))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == key_cm["metadata"]["name"]
        assert key_path.name in key_cm["data"], name


def test_network_policies_cover_every_pod(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    policies = of_kind(docs, "NetworkPolicy")
    for deployment in of_kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]  # fmt: skip
        assert covering, deployment["metadata"]["name"]
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in covering)


def test_service_monitor_scrapes_existing_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for monitor in of_kind(docs, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        services = [s for s in of_kind(docs, "Service") if wanted <= s["metadata"].get("labels", {}).items()]
        assert services, "the ServiceMonitor selects no Service"
        ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_istio_extension_provider_matches_the_authz_service() -> None:
    docs = kustomize(KUBE / "overlays/istio")
    mesh = yaml.safe_load((KUBE / "overlays/istio/mesh-config.yaml").read_text())
    policy = yaml.safe_load((KUBE / "overlays/istio/authorization-policy.yaml").read_text())
    provider = mesh["spec"]["meshConfig"]["extensionProviders"][0]
    http = provider["envoyExtAuthzHttp"]
    assert http["failOpen"] is False and http["statusOnError"] == "503"
    service = of_kind(docs, "Service")[0]
    assert http["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert http["port"] in {p["port"] for p in service["spec"]["ports"]}
    config = yaml.safe_load(config_map(docs, "authz-sidecar")["data"]["sidecar.yaml"])  # type: ignore[index]
    assert http["pathPrefix"] == config["listen"]["path_prefix"] and http["port"] == config["listen"]["port"]
    assert "x-forwarded-client-cert" in http["includeRequestHeadersInCheck"]
    assert "x-authz-xfcc-secret" in http["includeAdditionalHeadersInCheck"]
    assert policy["kind"] == "AuthorizationPolicy" and policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == provider["name"]
