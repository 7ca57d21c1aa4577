from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, validate_config


def test_defaults_are_documented_values() -> None:
    config = load_config(environ={})
    assert config.listen.port == 9191
    assert config.admin.port == 9192
    assert config.opa.url == "http://127.0.0.1:8181"
    assert config.opa.decision_path == "agent/authz/decision"
    assert config.identity.required is True
    assert config.request_body.allow_partial is False


def test_yaml_file_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("opa:\n  url: http://opa:8181/\n  timeout_ms: 200\nidentity:\n  sources: [jwt_svid]\n")
    env = {"AUTHZ_OPA__TIMEOUT_MS": "300", "AUTHZ_IDENTITY__JWT_SVID__AUDIENCES": "[a, b]"}
    config = load_config(path, env)
    assert config.opa.url == "http://opa:8181"
    assert config.opa.timeout_ms == 300
    assert config.identity.sources == ["jwt_svid"]
    assert config.identity.jwt_svid.audiences == ["a", "b"]


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: {port: 7000}\n")
    assert load_config(environ={"AUTHZ_CONFIG": str(path)}).listen.port == 7000


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"opa": {"timeout_ms": -1}}, "opa.timeout_ms"),
        ({"opa": {"url": "ftp://x"}}, "opa.url"),
        ({"opa": {"decision_path": "a/../b"}}, "opa.decision_path"),
        ({"opa": {"colour": "red"}}, "opa.colour: unknown key"),
        ({"identity": {"sources": ["header"]}}, "identity.sources.0"),
        ({"identity": {"jwt_svid": {"algorithms": ["HS256"]}}}, "identity.jwt_svid.algorithms"),
        ({"identity": {"jwt_svid": {"algorithms": ["none"]}}}, "identity.jwt_svid.algorithms"),
        ({"identity": {"trust_domains": ["Not A Domain"]}}, "identity.trust_domains"),
        ({"listen": {"path_prefix": "authz/"}}, "listen.path_prefix"),
    ],
)
def test_invalid_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(raw)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("opa: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", {})
    top = tmp_path / "list.yaml"
    top.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top, {})


def test_unknown_env_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"opa\.nope: unknown key"):
        load_config(environ={"AUTHZ_OPA__NOPE": "1"})


POD = {"sources": ["pod"], "pod": {"spiffe_id": "spiffe://demo.local/agent/a"}}


@pytest.mark.parametrize(
    ("raw", "exposed"),
    [
        ({"listen": {"host": "0.0.0.0"}}, "listen.host '0.0.0.0'"),
        ({"listen": {"host": "::"}}, "listen.host '::'"),
        ({"listen": {"host": "10.0.0.7"}}, "listen.host '10.0.0.7'"),
        ({"listen": {"host": "sidecar.internal"}}, "listen.host 'sidecar.internal'"),
        ({"grpc": {"enabled": True, "host": "0.0.0.0"}}, "grpc.host '0.0.0.0'"),
        # A check socket does not make the agent API on host:port pod-only.
        ({"listen": {"host": "0.0.0.0", "socket": "/run/authz/sidecar.sock"}}, "listen.host '0.0.0.0'"),
    ],
)
def test_pod_identity_needs_a_loopback_check_listener(raw: dict[str, object], exposed: str) -> None:
    """The pod source names every caller as the pod: anyone reaching the listener would be it."""
    with pytest.raises(ConfigError, match=f"identity.sources has 'pod'.*loopback-only.*not {exposed}"):
        validate_config({"identity": POD, **raw})


@pytest.mark.parametrize(
    "raw",
    [
        {"listen": {"host": "127.0.0.1"}},
        {"listen": {"host": "::1"}},
        {"listen": {"host": "localhost"}, "grpc": {"enabled": True, "host": "127.0.0.2"}},
        {"grpc": {"enabled": False, "host": "0.0.0.0"}},  # not listening at all
        {"listen": {"socket": "/run/authz/sidecar.sock"}, "grpc": {"enabled": True, "socket": "/run/authz/g.sock"}},
    ],
)
def test_pod_identity_on_loopback_is_accepted(raw: dict[str, object]) -> None:
    assert validate_config({"identity": POD, **raw}).identity.sources == ["pod"]


def test_other_sources_may_listen_anywhere() -> None:
    """XFCC and JWT-SVIDs are verified per request, so the listener's reach does not name anyone."""
    assert validate_config({"listen": {"host": "0.0.0.0"}}).listen.host == "0.0.0.0"


def test_header_names_are_lower_case() -> None:
    """Lookups use lower-case names: X-Agent-Task-Token would match nothing, and the token (with its
    signature) would reach OPA as an ordinary header instead of being verified and withheld."""
    env = {
        "AUTHZ_TASKS__TOKEN_HEADER": "X-Agent-Task-Token",
        "AUTHZ_APPROVALS__HEADER": "X-Agent-Approval-ID",
        "AUTHZ_IDENTITY__XFCC__SECRET_HEADER": "X-Authz-XFCC-Secret",
    }
    config = load_config(environ=env)
    assert config.tasks.token_header == "x-agent-task-token"
    assert config.approvals.header == "x-agent-approval-id"
    assert config.identity.xfcc.secret_header == "x-authz-xfcc-secret"


@pytest.mark.parametrize("name", ["", "x agent", "x-agent:token", "x-agent\r\nx-evil", "x-ägent"])
def test_header_names_must_be_header_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"tasks\.token_header: .*is not an HTTP header name"):
        validate_config({"tasks": {"token_header": name}})


async def test_the_agent_api_names_a_credential_less_caller_the_pod_only_with_the_pod_source(
    tmp_path: Path,
) -> None:
    """In a pod whose agent has no SVID, the agent opens tasks as the pod; elsewhere the API
    still demands a JWT-SVID, and a presented one is never passed over for the pod."""
    from sidecar.identity import IdentityError
    from sidecar.server import build_components

    bundle = tmp_path / "bundle.json"
    bundle.write_text('{"keys": []}')
    jwt_svid = {"bundle_files": {"demo.local": str(bundle)}}
    for sources, expected in [(["pod"], "spiffe://demo.local/agent/a"), (["jwt_svid"], None)]:
        identity = {**POD, "sources": sources, "trust_domains": ["demo.local"], "jwt_svid": jwt_svid}
        parts = await build_components(validate_config({"identity": identity, "opa": {"url": "http://127.0.0.1:1"}}))
        try:
            if expected is None:
                with pytest.raises(IdentityError):
                    parts.api_resolver.resolve({})
            else:
                resolved = parts.api_resolver.resolve({})
                assert resolved is not None and str(resolved.spiffe_id) == expected
            with pytest.raises(IdentityError):  # a presented, invalid JWT-SVID is a 401, never the pod
                parts.api_resolver.resolve({"authorization": "Bearer not.a.jwt"})
        finally:
            await parts.close()
