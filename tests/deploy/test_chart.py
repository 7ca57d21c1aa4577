"""charts/authz-sidecar: every mode renders, every object validates, the security invariants hold.

Rendering uses the real ``helm`` (built by ./taskw), each mode with its ``ci/<mode>-values.yaml``
(tests/deploy/chart.py); validation the Kubernetes OpenAPI schemas bundled in
``kubernetes-validate`` (offline). Custom resources (ServiceMonitor, ClusterSPIFFEID, Istio's)
have no bundled schema: they are checked against the fields of their CRDs that the chart uses.
The Envoy configs inside the ConfigMaps are validated by Envoy itself, the sidecar configs by the
sidecar's own loader. No cluster runs here: everything is checked on the rendered objects.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devstack.stack import OPA_ENV, OPA_RUN_FLAGS
from sidecar.config import load_config
from tests.deploy.chart import CHART, MODES, config_map, containers, helm, helm_args, helm_template, of_kind, render

K8S_VERSION = "1.33"
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip
TRIO = {"envoy", "authz-sidecar", "opa"}
SVID_CONTAINERS = {"envoy", "authz-sidecar"}  # the only containers SPIRE issues SVIDs to (spiffe.clusterSPIFFEIDs)


@pytest.fixture(scope="module", params=MODES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


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
                    "namespaceSelector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                    "podSelector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                    "workloadSelectorTemplates": {"type": "array", "items": {"type": "string", "pattern": "^k8s:"}},
                },
            }
        },
    },
}


def _istio_schema(spec_fields: set[str]) -> dict[str, Any]:
    """Istio's resources: the top-level fields of their CRDs the chart uses, namespaced."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {field: {"type": ["object", "array", "string"]} for field in spec_fields},
            },
        },
    }


CUSTOM[("security.istio.io/v1", "AuthorizationPolicy")] = _istio_schema({"selector", "action", "provider", "rules"})
CUSTOM[("security.istio.io/v1", "PeerAuthentication")] = _istio_schema({"selector", "mtls", "portLevelMtls"})
CUSTOM[("networking.istio.io/v1alpha3", "EnvoyFilter")] = _istio_schema({"workloadSelector", "configPatches"})


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
    deployment = of_kind(render("egress"), "Deployment")[0]
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
        for container in containers(spec):
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
        names = {c["name"] for c in containers(spec)}
        csi = [v for v in spec.get("volumes", []) if "csi" in v]
        if not names & {"authz-sidecar", "envoy"}:
            assert not csi, name
            continue
        assert len(csi) == 1, name
        assert csi[0]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}, name
        for container in containers(spec):
            for mount in container.get("volumeMounts", []):
                if mount["name"] == csi[0]["name"]:
                    assert mount.get("readOnly") is True, (name, container["name"])
        sidecar = next(c for c in containers(spec) if c["name"] == "authz-sidecar")
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
        for container in containers(spec):
            where = f"{overlay}: {name}/{container['name']}"
            wanted = bool(csi) and container["name"] in SVID_CONTAINERS
            assert reaches_workload_api(container, csi) is wanted, where
            checked.add(container["name"])
    if overlay in {"egress", "ingress"}:
        assert checked - TRIO, "the agent's or tool's container was checked too"


def registered_containers(registration: dict[str, Any]) -> list[str]:
    """The container names a ClusterSPIFFEID's ``k8s:container-name`` selectors allow."""
    templates = registration["spec"].get("workloadSelectorTemplates", [])
    return [t.removeprefix("k8s:container-name:") for t in templates if t.startswith("k8s:container-name:")]


def selects_pod(registration: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """A ClusterSPIFFEID selects the pod: its namespace and pod label selectors both match."""
    spec = registration["spec"]
    namespace = spec.get("namespaceSelector", {}).get("matchLabels", {})
    if namespace and namespace != {"kubernetes.io/metadata.name": deployment["metadata"]["namespace"]}:
        return False
    labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    return bool(spec["podSelector"]["matchLabels"].items() <= labels)


def test_spire_issues_svids_only_to_the_containers_that_mount_the_socket() -> None:
    pods = 0
    registered_anywhere: set[str] = set()
    for mode in MODES:
        docs = render(mode)
        registrations = of_kind(docs, "ClusterSPIFFEID")
        for registration in registrations:
            # Without exactly one container-name selector, every container of the pod gets the SVID.
            assert len(registered_containers(registration)) == 1, registration
        registered_anywhere |= {n for r in registrations for n in registered_containers(r)}
        for deployment in of_kind(docs, "Deployment"):
            pod = deployment["spec"]["template"]
            csi = {v["name"] for v in pod["spec"].get("volumes", []) if "csi" in v}
            mounting = {c["name"] for c in containers(pod["spec"]) if reaches_workload_api(c, csi)}
            selecting = [r for r in registrations if selects_pod(r, deployment)]
            registered = {n for r in selecting for n in registered_containers(r)}
            assert mounting == registered, (mode, deployment["metadata"]["name"])
            pods += bool(mounting)
    assert registered_anywhere == SVID_CONTAINERS
    assert pods >= 3, "the egress, ingress and istio pods reach the Workload API"


def test_no_other_pod_is_registered() -> None:
    """A registration that selected the agent's pod by labels it shares with other releases would
    hand their containers SVIDs: each selects its own release's pods in its own namespace."""
    for mode in MODES:
        docs = render(mode)
        for registration in of_kind(docs, "ClusterSPIFFEID"):
            spec = registration["spec"]
            assert spec["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": of_kind(docs, "Deployment")[0]["metadata"]["namespace"]
            }
            assert "app.kubernetes.io/instance" in spec["podSelector"]["matchLabels"], mode


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
    sidecar_cm = config_map(docs, "sidecar.yaml")
    assert sidecar_cm is not None
    path = tmp_path / "sidecar.yaml"
    path.write_text(sidecar_cm["data"]["sidecar.yaml"])
    registrations = of_kind(docs, "ClusterSPIFFEID")
    pods_named = 0
    for deployment in of_kind(docs, "Deployment"):
        named = {c["name"]: c for c in containers(deployment["spec"]["template"]["spec"])}
        if "authz-sidecar" not in named:
            continue
        config = load_config(path, environ=container_env(deployment, named["authz-sidecar"]))
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
    if overlay == "egress":
        assert pods_named, "the egress sidecar names the agent by the pod's SPIFFE ID"


# -- the trio ---------------------------------------------------------------------------------
def test_trio_probes_and_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        named = {c["name"]: c for c in containers(spec)}
        if "authz-sidecar" not in named:
            continue
        assert TRIO - {"envoy"} <= set(named), name
        sidecar = named["authz-sidecar"]
        admin = next(p for p in sidecar["ports"] if p["name"] == "authz-admin")
        assert admin["containerPort"] == 9192
        assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "authz-admin"}
        assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "authz-admin"}
        opa = named["opa"]
        assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles", "OPA is ready only with a bundle"
        assert "--addr=unix:///run/authz/opa.sock" in opa["args"], "OPA's API is a socket in the trio's volume"
        assert not any(a.startswith("--addr=") and "unix://" not in a for a in opa["args"]), "no TCP API"
        assert set(OPA_RUN_FLAGS) <= set(opa["args"]), "OPA runs with the local stack's flags"
        env = {e["name"]: e for e in opa["env"]}
        assert {name: env[name].get("value") for name in OPA_ENV} == OPA_ENV, "and its Go runtime settings"
        # With GOGC raised, Go's collector must know the container's limit.
        assert env["GOMEMLIMIT"]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.memory"}}
        if "envoy" in named:
            assert named["envoy"]["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_envoy_never_fails_open_and_validates(rendered: tuple[str, list[dict[str, Any]]], envoy_bin: str) -> None:
    _, docs = rendered
    envoy = config_map(docs, "envoy.yaml")
    if envoy is None:
        assert not any(c["name"] == "envoy" for _, s in pod_specs(docs) for c in containers(s))
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
    sidecar_cm = config_map(docs, "sidecar.yaml")
    assert sidecar_cm is not None
    path = tmp_path / "sidecar.yaml"
    path.write_text(sidecar_cm["data"]["sidecar.yaml"])
    config = load_config(path)  # the sidecar's own validation: unknown keys and bad values fail
    assert config.opa.url == "unix:///run/authz/opa.sock", "the sidecar asks OPA on its socket"
    for name, spec in pod_specs(docs):
        named = {c["name"]: c for c in containers(spec)}
        if "authz-sidecar" not in named:
            continue
        mounts = {m["mountPath"]: m for m in named["authz-sidecar"]["volumeMounts"]}
        secret_file = config.identity.xfcc.trusted_secret_file
        if "xfcc" in config.identity.sources:
            assert secret_file is not None and str(secret_file.parent) in mounts, name
        if "envoy" in named:
            envoy = yaml.safe_load(config_map(docs, "envoy.yaml")["data"]["envoy.yaml"])  # type: ignore[index]
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
        for c in containers(spec)
        for m in c.get("volumeMounts", [])
        if Path(m["mountPath"]) == RUN_DIR or RUN_DIR in Path(m["mountPath"]).parents
    }
    assert mounting <= TRIO and {"authz-sidecar", "opa"} <= mounting, (name, mounting)
    names = {m["name"] for c in containers(spec) for m in c.get("volumeMounts", []) if Path(m["mountPath"]) == RUN_DIR}
    for volume in names:
        assert "emptyDir" in volumes[volume], (name, volume, "the run directory is the pod's own")
        users = {c["name"] for c in containers(spec) for m in c.get("volumeMounts", []) if m["name"] == volume}
        assert users <= TRIO, (name, users)


def test_opa_pulls_signed_bundles_and_ships_decision_logs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    opa_cm = config_map(docs, "opa.yaml")
    assert opa_cm is not None
    opa = yaml.safe_load(opa_cm["data"]["opa.yaml"])
    bundle = opa["bundles"]["authz"]
    assert bundle["service"] in opa["services"] and bundle["signing"]["keyid"] in opa["keys"]
    assert bundle["polling"]["min_delay_seconds"] > 0
    assert opa["decision_logs"]["service"] in opa["services"]
    assert opa["status"]["prometheus"] is True
    key_cm = config_map(docs, "bundle-signing.pub")
    assert key_cm is not None
    assert "-----BEGIN PUBLIC KEY-----" in key_cm["data"]["bundle-signing.pub"]
    for name, spec in pod_specs(docs):
        named = {c["name"]: c for c in containers(spec)}
        if "opa" not in named:
            continue
        set_file = next(a for a in named["opa"]["args"] if a.startswith("--set-file=keys."))
        assert set_file.startswith(f"--set-file=keys.{bundle['signing']['keyid']}.key="), "the key OPA verifies with"
        key_path = Path(set_file.split("=", 2)[2])
        mount = next(m for m in named["opa"]["volumeMounts"] if m["mountPath"] == str(key_path.parent))
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


def istio_mesh_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mesh config the istio-mode release renders for the operator to merge into Istio's."""
    holder = config_map(docs, "mesh-config.yaml")
    assert holder is not None
    mesh: dict[str, Any] = yaml.safe_load(holder["data"]["mesh-config.yaml"])
    return mesh


def test_istio_extension_provider_matches_the_authz_service() -> None:
    docs = render("istio")
    mesh = istio_mesh_config(docs)
    (policy,) = [d for d in of_kind(docs, "AuthorizationPolicy") if d["spec"]["action"] == "CUSTOM"]
    provider = mesh["spec"]["meshConfig"]["extensionProviders"][0]
    http = provider["envoyExtAuthzHttp"]
    assert http["failOpen"] is False and http["statusOnError"] == "503"
    (service,) = [s for s in of_kind(docs, "Service") if any(p["port"] == 9191 for p in s["spec"]["ports"])]
    assert http["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert http["port"] in {p["port"] for p in service["spec"]["ports"]}
    config = yaml.safe_load(config_map(docs, "sidecar.yaml")["data"]["sidecar.yaml"])  # type: ignore[index]
    assert http["pathPrefix"] == config["listen"]["path_prefix"] and http["port"] == config["listen"]["port"]
    assert "x-forwarded-client-cert" in http["includeRequestHeadersInCheck"]
    assert "x-authz-xfcc-secret" in http["includeAdditionalHeadersInCheck"]
    assert policy["kind"] == "AuthorizationPolicy" and policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == provider["name"]


# -- the chart itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_helm_lint(mode: str) -> None:
    _release, *rest = helm_args(mode)
    result = subprocess.run([helm(), "lint", "--strict", *rest], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_is_the_committed_rendering_of_envoy_yaml() -> None:
    """One source: the chart's Envoy config is files/envoy-<mode>.yaml, the rendering of
    envoy/envoy.yaml that tests/deploy/test_envoy_variants.py checks and the e2e suite runs."""
    from devstack.envoy_config import variant_config

    for mode, variant in (("egress", "kubernetes-egress"), ("ingress", "kubernetes-ingress")):
        envoy = config_map(render(mode), "envoy.yaml")
        assert envoy is not None
        assert yaml.safe_load(envoy["data"]["envoy.yaml"]) == variant_config(variant), mode
        committed = (CHART / "files" / f"envoy-{mode}.yaml").read_text()
        assert yaml.safe_load(committed) == variant_config(variant)


TOOLS = [
    {"name": "tickets", "host": "tickets.tools.svc.cluster.local", "port": 10443,
     "spiffeId": "spiffe://example.org/ns/tools/sa/tickets"},
    {"name": "wiki", "host": "wiki.docs.svc.cluster.local", "port": 8443,
     "spiffeId": "spiffe://example.org/ns/docs/sa/wiki"},
]  # fmt: skip


def test_each_egress_tool_is_the_prototype_with_its_own_address() -> None:
    """More tools: each virtual host is the template's (refusals, then forwarding) with only its
    name, domains and cluster changed; each cluster the prototype's upstream mTLS with only its
    name, address, port and the server's SPIFFE ID changed."""
    from devstack.envoy_config import variant_config

    envoy = config_map(render("egress", {"egress.tools": TOOLS}), "envoy.yaml")
    assert envoy is not None
    config = yaml.safe_load(envoy["data"]["envoy.yaml"])
    prototype = variant_config("kubernetes-egress")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (want_hcm,) = [
        f["typed_config"] for f in prototype["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    ]
    vhosts = {v["name"]: v for v in hcm["route_config"].pop("virtual_hosts")}
    want_vhosts = {v["name"]: v for v in want_hcm["route_config"].pop("virtual_hosts")}
    assert hcm == want_hcm, "everything but the virtual hosts is the template's"
    assert set(vhosts) == {"tickets", "wiki", "not-allowed"} and vhosts["not-allowed"] == want_vhosts["not-allowed"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    want_clusters = {c["name"]: c for c in prototype["static_resources"]["clusters"]}
    assert set(clusters) == {
        "authz_sidecar",
        "authz_ext_proc",
        "spire_agent",
        "otel_collector",
        "tool_tickets",
        "tool_wiki",
    }
    for name in ("authz_sidecar", "authz_ext_proc", "spire_agent", "otel_collector"):
        assert clusters[name] == want_clusters[name]
    for tool in TOOLS:
        vhost = vhosts[tool["name"]]
        assert vhost["domains"] == [tool["host"], f"{tool['host']}:*"]
        forwarding = [route for route in vhost["routes"] if "route" in route]  # the MCP route and the final one
        assert len(forwarding) == 2
        for route in forwarding:
            assert route["route"]["cluster"] == f"tool_{tool['name']}"
            route["route"]["cluster"] = "tool_tickets"
        assert vhost["routes"] == want_vhosts["tickets"]["routes"], "the refusal routes and the forwarding ones"
        cluster = clusters[f"tool_{tool['name']}"]
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert endpoint["socket_address"] == {"address": tool["host"], "port_value": tool["port"]}
        tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        san = tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
        assert san == [{"san_type": "URI", "matcher": {"exact": tool["spiffeId"]}}], "only the tool's own ID"


def test_ingress_trusts_the_configured_trust_domain_only() -> None:
    docs = render("ingress", {"trustDomain": "prod.example.com"})
    envoy = yaml.safe_load(config_map(docs, "envoy.yaml")["data"]["envoy.yaml"])  # type: ignore[index]
    tls = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    validation = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://prod.example.com/"}}
    ]
    assert tls["require_client_certificate"] is True
    sidecar = yaml.safe_load(config_map(docs, "sidecar.yaml")["data"]["sidecar.yaml"])  # type: ignore[index]
    assert sidecar["identity"]["trust_domains"] == ["prod.example.com"]


@pytest.mark.parametrize("mode", ["egress", "ingress"])
def test_the_trio_are_native_sidecars_around_the_workload(mode: str) -> None:
    """Envoy, the sidecar and OPA start before the agent (in order, each once its startup probe
    passes) and stop after it; the agent or tool is the only ordinary container."""
    (deployment,) = [d for d in of_kind(render(mode), "Deployment") if d["metadata"]["name"] != "authz-bundles"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["opa", "authz-sidecar", "envoy"]
    for container in spec["initContainers"]:
        assert container["restartPolicy"] == "Always", container["name"]
        assert container["startupProbe"], container["name"]
    assert not {c["name"] for c in spec["containers"]} & TRIO
    drain = yaml.safe_load(config_map(render(mode), "sidecar.yaml")["data"]["sidecar.yaml"])["shutdown"]  # type: ignore[index]
    assert spec["terminationGracePeriodSeconds"] > drain["drain_delay_seconds"] + drain["drain_timeout_seconds"]


def test_egress_agents_send_through_envoy() -> None:
    (deployment,) = of_kind(render("egress"), "Deployment")
    (agent,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in agent["env"]}
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://127.0.0.1:10000"


def test_istio_mode_is_a_scaled_service_on_shared_state() -> None:
    docs = render("istio")
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "authz-sidecar"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["opa"] and spec["initContainers"][0]["restartPolicy"]
    assert [c["name"] for c in spec["containers"]] == ["authz-sidecar"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "authz-sidecar"}
    assert hpa["spec"]["minReplicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels
    sidecar = yaml.safe_load(config_map(docs, "sidecar.yaml")["data"]["sidecar.yaml"])  # type: ignore[index]
    assert sidecar["state"]["backend"] == "redis" and sidecar["credentials"]["keys_dir"]


def test_image_digests_win_over_tags() -> None:
    digest = "sha256:" + "a" * 64
    docs = render("egress", {"images.sidecar.digest": digest, "images.envoy.digest": digest})
    images = {c["name"]: c["image"] for c in containers(of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"])}
    assert images["authz-sidecar"] == f"ghcr.io/example/authz-sidecar@{digest}"
    assert images["envoy"] == f"envoyproxy/envoy@{digest}"
    assert images["opa"] == "openpolicyagent/opa:1.22.2-static"


REDIS_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "bundled single": ("istio", {}),
    "sentinel, ACL and TLS": ("ingress", {}),
    "cluster": (
        "istio",
        {
            "state.redis.deploy": False,
            "state.redis.mode": "cluster",
            "state.redis.clusterNodes": ["redis-0.redis:6379", "redis-1.redis:6379", "redis-2.redis:6379"],
            "state.redis.tls": {"enabled": True, "caSecret": "authz-redis-ca"},
            "state.redis.passwordSecret": {"name": "authz-redis", "key": "password"},
        },
    ),
    "own single instance": ("istio", {"state.redis.deploy": False, "state.redis.url": "rediss://redis.db:6380/0"}),
}


@pytest.mark.parametrize("case", sorted(REDIS_MODES))
def test_redis_modes_give_a_config_the_sidecar_loads(case: str, tmp_path: Path) -> None:
    """Single, cluster and sentinel (issue 22): the sidecar loads the rendered state section, and
    every file it names (passwords, CA) is mounted from a Secret into the sidecar only."""
    mode, values = REDIS_MODES[case]
    docs = render(mode, values)
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_map(docs, "sidecar.yaml")["data"]["sidecar.yaml"])  # type: ignore[index]
    state = load_config(path).state
    assert state.backend == "redis"
    (deployment,) = [
        d for d in of_kind(docs, "Deployment") if "authz-sidecar.io/trio" in d["spec"]["template"]["metadata"]["labels"]
    ]
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name, container in {c["name"]: c for c in containers(spec)}.items():
        for file in (state.redis_password_file, state.sentinel_password_file, state.redis_ca_file):
            if file is None:
                continue
            mounts = [m for m in container.get("volumeMounts", []) if Path(m["mountPath"]) == file.parent]
            assert bool(mounts) is (name == "authz-sidecar"), (case, name, file)
            if mounts:
                assert "secret" in volumes[mounts[0]["name"]] and mounts[0]["readOnly"] is True
    if case == "cluster":
        assert state.redis_mode == "cluster" and len(state.redis_cluster_nodes) == 3 and state.redis_tls
    if case.startswith("sentinel"):
        assert state.redis_mode == "sentinel" and state.sentinel_service and state.redis_username


REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "an unknown mode": ("egress", {"mode": "sidecar"}, "mode must be egress, ingress or istio"),
    "egress without tools": ("egress", {"egress.tools": []}, "mode=egress needs egress.tools"),
    "no bundle key": ("egress", {"opa.bundle.signingKey": ""}, "opa.bundle.signingKey"),
    "no workload": ("ingress", {"workload.containers": []}, "needs workload.containers"),
    "istio on memory": ("istio", {"state.backend": "memory"}, "state.backend must be redis"),
    "istio without shared keys": ("istio", {"signingKeys.existingSecret": ""}, "signingKeys.existingSecret"),
    "replicas on memory": ("egress", {"workload.replicas": 2}, "several replicas with state.backend=memory"),
    "cluster without seeds": (
        "istio", {"state.redis.deploy": False, "state.redis.mode": "cluster"}, "state.redis.clusterNodes"
    ),
    "sentinel without a service": (
        "istio",
        {"state.redis.deploy": False, "state.redis.mode": "sentinel", "state.redis.sentinel.nodes": ["s:26379"]},
        "state.redis.sentinel.service",
    ),
    "an agent mounting the Workload API": (
        "egress",
        {"workload.containers": [{"name": "agent", "image": "a:1", "volumeMounts": [
            {"name": "spiffe-workload-api", "mountPath": "/var/run/spire"}]}]},
        "workload container agent must not mount spiffe-workload-api",
    ),
    "an agent mounting the trio's sockets": (
        "egress",
        {"workload.containers": [{"name": "agent", "image": "a:1", "volumeMounts": [
            {"name": "mine", "mountPath": "/run/authz"}]}]},
        "must not mount mine at /run/authz",
    ),
    "an agent given the socket's address": (
        "egress",
        {"workload.containers": [{"name": "agent", "image": "a:1", "env": [
            {"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///x"}]}]},
        "must not be given SPIFFE_ENDPOINT_SOCKET",
    ),
    "a tool without its SPIFFE ID": (
        "egress", {"egress.tools": [{"name": "t", "host": "t.x", "port": 1}]}, "egress.tools[t].spiffeId"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_chart_refuses_what_would_not_hold(case: str) -> None:
    """Fail closed at install time: nothing renders for values that would deploy an open or
    broken trio."""
    mode, values, message = REFUSED[case]
    result = helm_template(mode, values)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_istio_filter_logs_what_every_envoy_logs() -> None:
    """The protected workloads' proxies write envoy/envoy.yaml's JSON access line (request id and
    decision id), taken from the same rendering, not a copy."""
    from devstack.envoy_config import variant_config

    template_hcm = variant_config("kubernetes-ingress")["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    docs = render("istio")
    (inbound,) = [d for d in of_kind(docs, "EnvoyFilter") if d["metadata"]["name"].endswith("-inbound")]
    patched = inbound["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    assert patched["access_log"] == template_hcm["access_log"]
    json_format = patched["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert json_format["request_id"] == "%REQ(X-REQUEST-ID)%"
    assert json_format["decision_id"] == "%RESP(X-AUTHZ-DECISION-ID)%"
