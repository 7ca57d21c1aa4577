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
