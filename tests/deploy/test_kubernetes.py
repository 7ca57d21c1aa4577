"""kubernetes/: every overlay renders, every object validates, the security invariants hold.

Rendering uses the real ``kustomize`` (built by ./taskw; ``kubectl kustomize`` as a fallback),
validation the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate`` (offline). Custom
resources (ServiceMonitor, AuthorizationPolicy, IstioOperator) have no bundled schema: they are
checked against the fields of their CRDs that these manifests use. The Envoy configs inside the
ConfigMaps are validated by Envoy itself, the sidecar configs by the sidecar's own loader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import load_config
from sidecar.dev.tools import ToolMissing, find_tool

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "kubernetes"
OVERLAYS = ["overlays/egress", "overlays/ingress", "overlays/istio", "services"]
K8S_VERSION = "1.33"
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip
TRIO = {"envoy", "authz-sidecar", "opa"}


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
        assert "--addr=127.0.0.1:8181" in opa["args"], "OPA's API stays pod-local"
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
    assert config.opa.url == "http://127.0.0.1:8181"
    for name, spec in pod_specs(docs):
        containers = {c["name"]: c for c in spec["containers"]}
        if "authz-sidecar" not in containers:
            continue
        mounts = {m["mountPath"]: m for m in containers["authz-sidecar"]["volumeMounts"]}
        secret_file = config.identity.xfcc.trusted_secret_file
        if "xfcc" in config.identity.sources:
            assert secret_file is not None and str(secret_file.parent) in mounts, name
        if "envoy" in containers:
            envoy_yaml = config_map(docs, "authz-envoy")["data"]["envoy.yaml"]  # type: ignore[index]
            assert f'uri: "http://127.0.0.1:{config.listen.port}"' in envoy_yaml
            assert config.listen.host == "127.0.0.1", "in a pod, only Envoy should reach the check port"


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
