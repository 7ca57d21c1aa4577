from pathlib import Path

from sidecar.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_matches_defaults() -> None:
    example = load_config(REPO / "examples" / "sidecar.yaml", {})
    defaults = load_config(None, {})
    assert example.opa == defaults.opa
    assert example.listen == defaults.listen
    assert example.request_body == defaults.request_body
    assert example.identity.jwt_svid.algorithms == defaults.identity.jwt_svid.algorithms


def test_configuration_reference_names_every_key() -> None:
    reference = (REPO / "docs" / "configuration.md").read_text()
    defaults = load_config(None, {}).model_dump()

    def keys(node: dict[str, object], prefix: str = "") -> list[str]:
        out: list[str] = []
        for name, value in node.items():
            if isinstance(value, dict) and name != "bundle_files":
                out += keys(value, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
        return out

    missing = [k for k in keys(defaults) if f"`{k}`" not in reference]
    assert not missing, f"docs/configuration.md does not document {missing}"
