"""A real ``opa`` on a bundle: the evaluator replay and explain use, and which input fields a
policy can read at all.

Replay starts one ``opa run --server`` on a unix socket in a private temporary directory (no
decision logs, no network listener) and sends it every recorded input over the Query API, a few
at a time: the same engine and the same bundle loading as the live OPA, without a process per
decision. Each query pins ``time.now_ns`` to the time the decision was recorded
(``... with time.now_ns as <ns>``), so rules about expiry decide as they did then.

Untrusted text from a log never becomes Rego: a decision path is quoted segment by segment
(``data["agent"]["authz"]["decision"]``) and the time is an integer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from sidecar.errors import Kind, SidecarError
from sidecar.executables import ToolMissing, find_tool
from sidecar.unix_http import unix_request

IGNORE = "*_test.rego"  # tests are not part of a policy, as for `opa build` of the bundle
CONCURRENCY = 8
QUERY_TIMEOUT_S = 30.0


class EngineError(SidecarError, RuntimeError):
    """OPA could not be started on the bundle, or could not be asked."""

    KIND = Kind.UNAVAILABLE
    CODE = "engine"


@dataclass(frozen=True)
class Outcome:
    defined: bool
    result: Any = None
    error: str | None = None  # OPA's own error (a conflict, a built-in error in strict mode, ...)


@dataclass(frozen=True)
class InputRead:
    """A reference to ``input`` in the policy: its constant prefix (None: any key) and where."""

    ref: tuple[str | None, ...]  # segments after ``input``
    file: str
    row: int

    def may_read(self, pointer: list[str]) -> bool:
        """Whether evaluating this reference can touch the value at ``/input/<pointer>``: one is a
        prefix of the other, a variable or computed key matching any segment."""
        return all(part is None or part == segment for part, segment in zip(self.ref, pointer, strict=False))


def decision_query(path: str, at_ns: int | None) -> str:
    """The Rego query for the decision at ``path`` (``a/b/c``), evaluated at ``at_ns``."""
    segments = [s for s in path.strip("/").split("/") if s]
    if not segments:
        raise EngineError(f"{path!r} is not a decision path")
    ref = "data" + "".join(f"[{json.dumps(s)}]" for s in segments)
    return f"x := {ref}" + (f" with time.now_ns as {int(at_ns)}" if at_ns is not None else "")


class Bundle:
    """A bundle directory, or a bundle archive (``.tar.gz``) unpacked into a temporary directory."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if source.is_dir():
            self.root = source
        elif source.is_file() and tarfile.is_tarfile(source):
            self._tmp = tempfile.TemporaryDirectory(prefix="authz-bundle-")
            with tarfile.open(source) as archive:
                archive.extractall(self._tmp.name, filter="data")
            self.root = Path(self._tmp.name)
        else:
            raise EngineError(f"{source} is neither a bundle directory nor a bundle archive (.tar.gz)")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def rego_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*.rego") if p.is_file() and not p.name.endswith("_test.rego"))

    def input_reads(self) -> list[InputRead]:
        """Every reference to ``input`` in the bundle's Rego (tests excluded), from ``opa parse``."""
        reads: list[InputRead] = []
        opa = _opa()
        for path in self.rego_files():
            done = subprocess.run(
                [opa, "parse", "--format", "json", "--json-include", "locations,-comments", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise EngineError(f"opa parse {path} failed: {done.stderr.strip() or done.stdout.strip()}")
            relative = str(path.relative_to(self.root))
            _collect_input_refs(json.loads(done.stdout), relative, reads)
        return reads


def _collect_input_refs(node: Any, file: str, reads: list[InputRead]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_input_refs(item, file, reads)
        return
    if not isinstance(node, dict):
        return
    kind, value = node.get("type"), node.get("value")
    row = (node.get("location") or {}).get("row", 0)
    parts = _input_ref(node)
    if parts is not None:
        reads.append(InputRead(parts, file, row))
        _collect_input_refs(node["value"][1:], file, reads)  # computed keys may read input themselves
        return
    if kind == "var" and value == "input":  # the whole input, e.g. passed to a function
        reads.append(InputRead((), file, row))
        return
    call = value if kind == "call" else node.get("terms")  # a call as a term, or as an expression
    if isinstance(call, list) and len(call) >= 3 and _is_object_get(call[0]):
        base = _input_ref(call[1])
        if base is not None:  # object.get(input..., key, default): reads only under that key
            reads.append(InputRead(base + _constant_path(call[2]), file, row))
            _collect_input_refs(call[2:], file, reads)
            _collect_input_refs([v for k, v in node.items() if k not in ("terms", "value")], file, reads)
            return
    if "target" in node and "value" in node and "type" not in node:  # `with input as x`: replaces, reads nothing
        _collect_input_refs(node["value"], file, reads)
        return
    for key, item in node.items():
        if key not in ("annotations", "comments"):  # a METADATA `schemas: - input: ...` reads nothing
            _collect_input_refs(item, file, reads)


def _is_object_get(term: Any) -> bool:
    names = term.get("value") if isinstance(term, dict) and term.get("type") == "ref" else None
    return isinstance(names, list) and [t.get("value") for t in names if isinstance(t, dict)] == ["object", "get"]


def _input_ref(term: Any) -> tuple[str | None, ...] | None:
    """The segments of a reference to ``input`` (None for a computed one), or None if it is not one."""
    if not isinstance(term, dict) or term.get("type") != "ref" or not isinstance(term.get("value"), list):
        return None
    terms = term["value"]
    head = terms[0] if terms else None
    if not (isinstance(head, dict) and head.get("type") == "var" and head.get("value") == "input"):
        return None
    return tuple(str(t["value"]) if isinstance(t, dict) and t.get("type") == "string" else None for t in terms[1:])


def _constant_path(term: Any) -> tuple[str | None, ...]:
    """object.get's key: a string, or an array of strings (a path); anything else: any key."""
    if isinstance(term, dict) and term.get("type") == "string":
        return (str(term["value"]),)
    if isinstance(term, dict) and term.get("type") == "array" and isinstance(term.get("value"), list):
        return tuple(
            str(t["value"]) if isinstance(t, dict) and t.get("type") == "string" else None for t in term["value"]
        )
    return (None,)


def _opa() -> str:
    try:
        return find_tool("opa")
    except ToolMissing as exc:
        raise EngineError(str(exc)) from exc


class PolicyEngine:
    """``with PolicyEngine(bundle) as engine: engine.evaluate([...])``; OPA stops on exit."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.socket = Path()
        self.version = ""

    def __enter__(self) -> PolicyEngine:
        self._tmp = tempfile.TemporaryDirectory(prefix="authz-replay-")
        tmp = Path(self._tmp.name)
        self.socket = tmp / "opa.sock"
        argv = [_opa(), "run", "--server", "--addr", f"unix://{self.socket}", "--unix-socket-perm", "600"]
        argv += ["--log-level", "error", "--skip-version-check", "--bundle", str(self.bundle.root), "--ignore", IGNORE]
        log = (tmp / "opa.log").open("wb")
        try:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        try:
            self._wait_ready(tmp / "opa.log")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, log: Path) -> None:
        if self._process is None:
            raise EngineError("opa was not started")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EngineError(f"opa could not load {self.bundle.source}:\n{_tail(log)}")
            try:
                if unix_request(self.socket, "GET", "/health?bundles", timeout=1).status_code == 200:
                    status = unix_request(self.socket, "GET", "/v1/config", timeout=5).json()
                    self.version = str(status.get("result", {}).get("labels", {}).get("version", ""))
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise EngineError(f"opa did not get ready on {self.bundle.source} within 30 s:\n{_tail(log)}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def evaluate(self, queries: list[tuple[str, dict[str, Any] | None]]) -> list[Outcome]:
        """``(query, input or None)`` pairs, answered in order."""
        return asyncio.run(self._evaluate_all(queries))

    async def _evaluate_all(self, queries: list[tuple[str, dict[str, Any] | None]]) -> list[Outcome]:
        connector = aiohttp.UnixConnector(path=str(self.socket), limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S)
        slots = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(query: str, input_doc: dict[str, Any] | None) -> Outcome:
                body: dict[str, Any] = {"query": query}
                if input_doc is not None:
                    body["input"] = input_doc
                async with slots:
                    try:
                        async with session.post("http://opa/v1/query", json=body) as response:
                            document = await response.json(content_type=None)
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        raise EngineError(f"opa did not answer a query: {exc!r}") from exc
                if status != 200:
                    return Outcome(False, error=_opa_error(document))
                rows = document.get("result") or []
                return Outcome(True, rows[0]["x"]) if rows else Outcome(False)

            return list(await asyncio.gather(*(one(q, i) for q, i in queries)))


def explain(bundle: Bundle, query: str, input_doc: Any, has_input: bool) -> dict[str, Any]:
    """``opa eval --explain=full --format=json`` of ``query`` in the bundle (file names relative to it)."""
    argv = [_opa(), "eval", "--bundle", ".", "--ignore", IGNORE, "--format", "json", "--explain", "full"]
    if has_input:
        argv.append("--stdin-input")
    done = subprocess.run(
        [*argv, query],
        cwd=bundle.root,
        input=json.dumps(input_doc) if has_input else "",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and not done.stdout.strip().startswith("{"):
        raise EngineError(f"opa eval failed on {bundle.source}:\n{done.stderr.strip() or done.stdout.strip()}")
    try:
        document: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise EngineError(f"opa eval gave no JSON: {done.stdout[:200]!r}") from exc
    if document.get("errors"):
        raise EngineError(f"opa eval failed on {bundle.source}: {_opa_error(document)}")
    return document


def source_lines(bundle: Bundle, file: str) -> list[str]:
    try:
        return (bundle.root / file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _opa_error(document: Any) -> str:
    if not isinstance(document, dict):
        return "opa answered with something other than a JSON object"
    errors = document.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        where = first.get("location") or {}
        at = f" ({where.get('file')}:{where.get('row')})" if where.get("file") else ""
        return f"{first.get('code', 'error')}: {first.get('message', '')}{at}"
    return f"{document.get('code', 'error')}: {document.get('message', '')}"


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
