"""One error taxonomy: every domain error is a SidecarError with a kind the wires can answer."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import sidecar.agent_api
import sidecar.policy.command
from sidecar.errors import Kind, SidecarError
from sidecar.wire_status import HTTP_STATUS, JSONRPC_CODE, verdict_of


def _all_subclasses(cls: type[SidecarError]) -> set[type[SidecarError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_every_kind_has_an_http_status_and_a_json_rpc_code() -> None:
    assert set(HTTP_STATUS) == set(Kind)
    assert all(verdict_of(kind) in JSONRPC_CODE for kind in Kind)
    assert verdict_of(Kind.UNAVAILABLE) == "error", "a failure is never recorded as a deny or an allow"


def test_every_exception_class_of_the_runtime_package_derives_from_the_base() -> None:
    assert sidecar.agent_api and sidecar.policy.command  # imported: they import every error class
    errors = _all_subclasses(SidecarError)
    names = {cls.__name__ for cls in errors}
    for expected in (
        "TaskError",
        "ApprovalError",
        "IdentityError",
        "BodyError",
        "StoreError",
        "OpaError",
        "DecisionError",
        "TokenError",
        "JwtSvidError",
        "XfccError",
        "DelegationError",
        "ConfigError",
        "SigningKeyError",
        "ParentEnded",
        "ApprovalConflict",
        "TooManyApprovals",
    ):
        assert expected in names, expected
    for cls in errors:
        assert isinstance(cls.KIND, Kind) and cls.CODE, cls


def test_an_error_carries_kind_reason_and_code_never_a_status() -> None:
    from sidecar.tasks import TaskError

    error = TaskError(Kind.NOT_FOUND, "no task t-1", task_id="t-1")
    assert (error.kind, error.reason, error.code, error.task_id) == (Kind.NOT_FOUND, "no task t-1", "task", "t-1")
    assert not hasattr(error, "status")


def test_no_exception_class_in_the_runtime_package_bypasses_the_base() -> None:
    package = Path(sidecar.agent_api.__file__).parent
    builtin_errors = {name for name in dir(builtins) if name.endswith(("Error", "Exception"))}
    for path in package.rglob("*.py"):
        if "dev" in path.relative_to(package).parts or path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & builtin_errors:
                    assert bases - builtin_errors, f"{path.name}: {node.name} derives only from {bases}"
