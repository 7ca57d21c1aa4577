"""The Rego quality gates of ``./taskw rego``, each shown to catch what it is there for: the input
JSON Schema turns a misspelt input field into a type error, data.json has a schema of its own, and
Regal lints with the project's config."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack.tools import ToolMissing, find_tool

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "rego" / "agent" / "config" / "data.json"
DATA_SCHEMA = REPO / "sidecar" / "schema" / "policy-data.schema.json"


def rego_task() -> list[str]:
    task = yaml.safe_load((REPO / "Taskfile.yml").read_text())["tasks"]["rego"]
    return [str(cmd) for cmd in task["cmds"]]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(DATA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_data_matches_its_schema(validator: jsonschema.Draft202012Validator) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(json.loads(DATA.read_text()))]
    assert errors == []


def _route(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def pick(data: dict[str, Any]) -> dict[str, Any]:
        route: dict[str, Any] = next(r for rs in data["routes"].values() for r in rs if r["name"] == name)
        return route

    return pick


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(sesion=d.pop("session")), "$"),  # a misspelt section the policy would ignore
        (lambda d: d["session"].update(max_writes="10"), "$.session.max_writes"),
        (lambda d: _route("create ticket")(d).update(methods=["POST"]), "$.routes.POST[0]"),  # the key is the method
        (lambda d: d["routes"].update(get=d["routes"].pop("GET")), "$.routes"),
        (
            lambda d: _route("create ticket")(d)["credential"].update(ttl_seconds=0),
            "$.routes.POST[0].credential.ttl_seconds",
        ),
        (lambda d: _route("create ticket")(d).pop("scope"), "$.routes.POST[0]"),  # a credential needs a scope
        (lambda d: d["mcp"]["tools"]["delete_record"]["step_up"].update(kind="aproval"), "step_up"),
        (lambda d: d["mcp"]["tools"]["search_docs"].update(clas="read"), "$.mcp.tools.search_docs"),
        (lambda d: d["agents"].update({"demo.local/agent/x": {"roles": []}}), "$.agents"),
        (lambda d: d["log_mask"].append("/headers/x"), "$.log_mask[3]"),
    ],
)
def test_the_data_schema_refuses_mistakes(
    validator: jsonschema.Draft202012Validator, mutate: Callable[[dict[str, Any]], Any], where: str
) -> None:
    data = copy.deepcopy(json.loads(DATA.read_text()))
    mutate(data)
    errors = list(validator.iter_errors(data))
    assert errors, "the schema accepted it"
    assert any(where in e.json_path or where in str(list(e.absolute_path)) for e in errors), [
        (e.json_path, e.message) for e in errors
    ]


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    copy_dir = tmp_path / "rego"
    shutil.copytree(REPO / "rego", copy_dir)
    return copy_dir


def _check(opa: str, policy: Path) -> subprocess.CompletedProcess[str]:
    """What ./taskw rego runs, on ``policy``."""
    return subprocess.run(
        [opa, "check", "--strict", "--schema", str(REPO / "sidecar" / "schema"), str(policy)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_misspelt_input_field_is_a_type_error(opa_bin: str, policy_copy: Path) -> None:
    assert any("opa check --strict --schema sidecar/schema rego" in cmd for cmd in rego_task())
    probe = policy_copy / "agent" / "authz" / "probe.rego"
    probe.write_text('package agent.authz\n\nprobe if input.attributes.request.http.method == "GET"\n')
    assert _check(opa_bin, policy_copy).returncode == 0, "a correct reference type-checks"
    probe.write_text('package agent.authz\n\nprobe if input.attributes.request.http.methd == "GET"\n')
    failed = _check(opa_bin, policy_copy)
    assert failed.returncode != 0
    assert "undefined ref: input.attributes.request.http.methd" in failed.stdout + failed.stderr
    assert '"method"' in failed.stdout + failed.stderr, "OPA names the fields the schema has"


@pytest.fixture(scope="module")
def regal_bin() -> str:
    try:
        return find_tool("regal")
    except ToolMissing as exc:
        pytest.fail(f"{exc} (./taskw test builds it into .tools/bin)")


def test_regal_runs_with_the_project_config_and_catches_a_lint(regal_bin: str, policy_copy: Path) -> None:
    assert any(cmd.startswith("regal lint rego tests/rego") for cmd in rego_task())
    shutil.copytree(REPO / ".regal", policy_copy.parent / ".regal")
    clean = subprocess.run(
        [regal_bin, "lint", str(policy_copy)], capture_output=True, text=True, cwd=policy_copy.parent
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (policy_copy / "agent" / "authz" / "probe.rego").write_text(
        "package agent.authz\n\nprobe := object.union(object.union({}, {}), {})\n"
    )
    linted = subprocess.run(
        [regal_bin, "lint", "--format", "json", str(policy_copy)],
        capture_output=True,
        text=True,
        cwd=policy_copy.parent,
    )
    assert linted.returncode != 0
    assert [v["title"] for v in json.loads(linted.stdout)["violations"]] == ["use-object-union-n"]
