"""``./taskw compat``: the differential run against the real opa-envoy-plugin.

For each policy in tests/compat/policies/ (and each plugin option run), the real
``opa-envoy-plugin`` and our sidecar in the ``opa-envoy-plugin`` profile (gRPC mode, each with its
own OPA and the same policy) get the same CheckRequests from tests/compat/corpus/. The run
compares, field by field, the ``input`` each OPA received (console decision logs) and the
CheckResponse; prints a table, writes bench/results/compat.json, and exits 1 on any difference
that :data:`ALLOWED` does not explain (README "Input", "Differences from the plugin").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format

from devstack.ports import free_ports
from sidecar.config import validate_config
from sidecar.grpc_server import start_grpc_server
from sidecar.identity import IdentityResolver
from sidecar.opa import HttpOpaClient
from sidecar.phases.plugin import PARSE_ERROR_PATH
from sidecar.pipeline import Pipeline, Services, build_phases

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "compat" / "corpus"
POLICIES = ROOT / "tests" / "compat" / "policies"
RESULTS = ROOT / "bench" / "results"
DECISION_PATH = "envoy/authz/allow"
PARSE_ERROR = "request_parse_error: "
WORDING = (r".", r"^(denied_response/body|status/message)$")
HS256_SECRET = "compat-hs256-secret-of-32-bytes-at-least"
NOW = 1_700_000_000  # the policies verify tokens at this time, so the corpus never expires

# Differences that are explained, not bugs: (case-name regex, field regex) → reason. Each one is
# in README "Differences from the plugin"; the reference binary is the pinned v1.4.2-envoy
# (the Go module proxy serves no newer one here), and the profile follows the current plugin.
ALLOWED: dict[tuple[str, str], str] = {
    (r".", r"^input/source_principal$"): (
        "top-level input.source_principal was added to the plugin after v1.4.2; the profile follows current upstream"
    ),
    (r"^(query-semicolon|query-bad-escape)", r"."): (
        "the plugin v1.4.2 drops query pairs it cannot parse (url.Query); current upstream and the profile answer 400"
    ),
    (r"^partial-header", r"."): (
        "x-envoy-auth-partial-body: true marks the body truncated in current upstream and the profile, not in v1.4.2"
    ),
    (r"^(path-double-slash|path-fragment|parsed-path-double_leading)", r"."): (
        "v1.4.2 reads the path with url.Parse (// starts an authority, # a fragment); current upstream and the"
        " profile with url.PathUnescape, which judges the path the upstream gets"
    ),
    WORDING: (
        "the wording of a request_parse_error (Go's JSON/URL error texts); the 400, the gRPC status and the"
        " error code agree (checked: both say request_parse_error)"
    ),
}


@dataclass
class Case:
    name: str
    source: str
    policy: str
    request: dict[str, Any]
    options: tuple[str, ...] = ()


@dataclass
class Result:
    case: Case
    differences: list[tuple[str, str, str]] = field(default_factory=list)  # field, plugin, ours
    unexplained: list[str] = field(default_factory=list)
    explained: list[str] = field(default_factory=list)


# -- the corpus -----------------------------------------------------------------------------
def tokens() -> tuple[dict[str, str], dict[str, Any]]:
    """Placeholders → credentials, and the JWKS the RS256 policy trusts (fresh keys per run)."""
    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "compat", "alg": "RS256", "use": "sig"})
    base = {"iat": NOW - 60, "exp": NOW + 3600}

    def hs(claims: dict[str, Any], secret: str = HS256_SECRET) -> str:
        return jwt.encode({**base, **claims}, secret, algorithm="HS256")

    def rs(claims: dict[str, Any], signer: Any = key) -> str:
        return jwt.encode({**base, "aud": "compat", **claims}, signer, algorithm="RS256", headers={"kid": "compat"})

    values = {
        "$HS256_ADMIN": hs({"sub": "bob", "role": "admin"}),
        "$HS256_GUEST": hs({"sub": "alice", "role": "guest"}),
        "$HS256_EXPIRED": hs({"sub": "bob", "role": "admin", "exp": NOW - 10}),
        "$HS256_WRONG_SECRET": hs({"sub": "bob", "role": "admin"}, "another-secret-also-32-bytes-long-ok"),
        "$RS256_READ": rs({"sub": "svc", "scope": "read"}),
        "$RS256_WRITE": rs({"sub": "svc", "scope": "write"}),
        "$RS256_OTHER_KEY": rs({"sub": "svc", "scope": "read"}, other),
        "$RS256_WRONG_AUD": rs({"sub": "svc", "scope": "read", "aud": "elsewhere"}),
        "$BASIC_ALICE": "Basic " + base64.b64encode(b"alice:password").decode(),
        "$BASIC_BOB": "Basic " + base64.b64encode(b"bob:password").decode(),
    }
    return values, {"keys": [jwk]}


def load_corpus(quick: bool) -> list[Case]:
    """Every case of every corpus file; ``quick``: those marked ``quick``."""
    cases = []
    for path in sorted(CORPUS.glob("*.json")):
        doc = json.loads(path.read_text())
        for entry in doc["cases"]:
            if quick and not entry.get("quick"):
                continue
            for policy in entry["policies"]:
                name = f"{entry['name']}@{policy}" + "".join(f"+{o}" for o in entry.get("options", ()))
                cases.append(Case(name, doc["source"], policy, entry["request"], tuple(entry.get("options", ()))))
    return cases


def substitute(value: Any, table: dict[str, str]) -> Any:
    if isinstance(value, str):
        for placeholder, text in table.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, dict):
        return {k: substitute(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, table) for v in value]
    return value


# -- the two sides --------------------------------------------------------------------------
def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: the process exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (our own http://127.0.0.1 URL)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(argv: list[str], log: Path, health: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_http(health, process, log)
    return process


def decision_logs(log: Path) -> Iterator[dict[str, Any]]:
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == "Decision Log":
            yield entry


async def check(stub: Any, request: Any) -> dict[str, Any]:
    """The CheckResponse as a dict (field presence kept), or the gRPC error's class."""
    try:
        response = await stub.Check(request, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return {"rpc_error": "no decision (Envoy answers status_on_error)", "code": exc.code().name}
    return {
        "grpc_code": response.status.code,
        "http_response": response.WhichOneof("http_response"),
        **json_format.MessageToDict(response, preserving_proto_field_name=True),
    }


async def run_policy(policy: str, options: tuple[str, ...], cases: list[Case], workdir: Path) -> None:
    """One policy (and plugin options): both sides up, every case sent to both, logs read back."""
    label = "-".join((policy, *options))
    bundle = workdir / f"bundle-{label}"
    shutil.copytree(POLICIES / policy, bundle)
    (bundle / "compat").mkdir()
    (bundle / "compat" / "data.json").write_text(json.dumps({"jwks": JWKS}))
    plugin_rest, plugin_grpc, opa_rest, ours_grpc = free_ports(4)
    plugin_log, opa_log = workdir / f"plugin-{label}.log", workdir / f"opa-{label}.log"
    plugin_options = [a for o in options for a in ("--set", f"plugins.envoy_ext_authz_grpc.{o}=true")]
    common = ["--log-format", "json", "--set", "decision_logs.console=true", str(bundle)]
    plugin = start(
        [
            shutil.which("opa-envoy-plugin") or "opa-envoy-plugin",
            "run", "--server", "--addr", f"127.0.0.1:{plugin_rest}",
            "--set", f"plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{plugin_grpc}",
            "--set", f"plugins.envoy_ext_authz_grpc.path={DECISION_PATH}",
            *plugin_options, *common,
        ],
        plugin_log,
        f"http://127.0.0.1:{plugin_rest}/health",
    )  # fmt: skip
    opa = start(
        [shutil.which("opa") or "opa", "run", "--server", "--addr", f"127.0.0.1:{opa_rest}", *common],
        opa_log,
        f"http://127.0.0.1:{opa_rest}/health",
    )
    config = validate_config(
        {
            "profile": "opa-envoy-plugin",
            "plugin": {o.replace("-", "_"): True for o in options},
            "opa": {"url": f"http://127.0.0.1:{opa_rest}", "decision_path": DECISION_PATH},
            "log": {"decisions": False},
        }
    )
    client = HttpOpaClient(config.opa.url, DECISION_PATH, 2000, 8)
    await client.start()
    pipeline = Pipeline(build_phases(config, Services(IdentityResolver(config.identity, None, None), client)))
    server = await start_grpc_server(pipeline, f"127.0.0.1:{ours_grpc}", "x-authz-xfcc-secret", attributes=True)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{plugin_grpc}") as to_plugin,
            grpc.aio.insecure_channel(f"127.0.0.1:{ours_grpc}") as to_ours,
        ):
            stubs = (
                external_auth_pb2_grpc.AuthorizationStub(to_plugin),
                external_auth_pb2_grpc.AuthorizationStub(to_ours),
            )
            for case in cases:
                message = json_format.ParseDict(substitute(case.request, TOKENS), external_auth_pb2.CheckRequest())
                case.request = {"plugin": await check(stubs[0], message), "ours": await check(stubs[1], message)}
        await asyncio.sleep(0.5)  # console decision logs are written after the answer
    finally:
        await server.stop(None)
        await client.close()
        for process in (plugin, opa):
            process.terminate()
            process.wait(10)
    inputs = {"plugin": _by_id(plugin_log), "ours": _by_id(opa_log)}
    parse_errors = {"plugin": _plugin_parse_errors(plugin_log), "ours": _our_parse_errors(opa_log)}
    for case in cases:
        for side in ("plugin", "ours"):
            response = case.request[side]
            decision_id = response.get("dynamic_metadata", {}).get("decision_id")
            entry = inputs[side].get(decision_id) if decision_id else None
            response["input"] = _version_as_policy_sees_it(entry.get("input")) if entry else None
            if response.get("status", {}).get("message", "").startswith(PARSE_ERROR):
                # The requests go one at a time, so the n-th logged parse error is the n-th answered.
                logged = parse_errors[side]
                response["logged_error"] = logged.pop(0) if logged else "<not in the decision log>"


def _version_as_policy_sees_it(document: Any) -> Any:
    """v1.4.2 logs ``input.version`` (an OPA ast.Object in its input) as the object's internal
    pairs ``[[{type, value}, {type, value}], …]``; the policy sees a plain object."""
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, list) and all(isinstance(p, list) and len(p) == 2 for p in version):
        document["version"] = {k["value"]: v["value"] for k, v in version}
    return document


def _plugin_parse_errors(log: Path) -> list[str]:
    """One entry per decision-log event the plugin wrote for a request it could not parse (an
    ``error`` with no input: the input was never built)."""
    return [
        "request_parse_error"
        for entry in decision_logs(log)
        if isinstance(entry.get("error"), str) and entry.get("input") is None
    ]


def _our_parse_errors(log: Path) -> list[str]:
    """The same from our OPA's log (events at PARSE_ERROR_PATH, the error in the input)."""
    return [
        str(entry.get("input", {}).get("error", {}).get("code"))
        for entry in decision_logs(log)
        if entry.get("path") == PARSE_ERROR_PATH
    ]


def _by_id(log: Path) -> dict[str, dict[str, Any]]:
    return {entry["decision_id"]: entry for entry in decision_logs(log) if "decision_id" in entry}


# -- comparing ------------------------------------------------------------------------------
UNORDERED = frozenset({"headers", "response_headers_to_add", "query_parameters_to_set"})


def normalise(value: Any) -> Any:
    """Numbers compare by value (1 and 1.0 are one number to Rego); decision ids by presence; header
    and query lists by name (the plugin walks a Go map, in random order; one name keeps its order)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {
            k: (
                "<decision id>"
                if k == "decision_id"
                else sorted(normalise(v), key=_name)
                if k in UNORDERED and isinstance(v, list)
                else normalise(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _name(option: Any) -> str:
    return str(option.get("header", option).get("key", "")) if isinstance(option, dict) else ""


def diff(plugin: Any, ours: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    if isinstance(plugin, dict) and isinstance(ours, dict):
        for key in sorted(set(plugin) | set(ours)):
            here = f"{path}/{key}" if path else key
            if key not in plugin or key not in ours:
                yield here, _show(plugin.get(key, "<absent>")), _show(ours.get(key, "<absent>"))
            else:
                yield from diff(plugin[key], ours[key], here)
    elif plugin != ours:
        yield path, _show(plugin), _show(ours)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _explains(rule: tuple[str, str], case: str, where: str, theirs: str, mine: str) -> bool:
    cases, fields = rule
    if not (re.search(cases, case) and re.search(fields, where)):
        return False
    if rule == WORDING:  # only the wording: both must be request_parse_errors
        return theirs.startswith(PARSE_ERROR) and mine.startswith(PARSE_ERROR)
    return True


def compare(case: Case) -> Result:
    sides = case.request
    result = Result(case)
    plugin, ours = normalise(sides["plugin"]), normalise(sides["ours"])
    if "rpc_error" in plugin and "rpc_error" in ours:  # both: no decision, Envoy's status_on_error
        plugin.pop("code"), ours.pop("code")
        plugin.pop("input", None), ours.pop("input", None)
    result.differences = list(diff(plugin, ours))
    for where, theirs, mine in result.differences:
        reason = next((r for rule, r in ALLOWED.items() if _explains(rule, case.name, where, theirs, mine)), None)
        (result.explained if reason else result.unexplained).append(where)
    return result


# -- the run --------------------------------------------------------------------------------
TOKENS: dict[str, str] = {}
JWKS: dict[str, Any] = {}


async def run(quick: bool) -> list[Result]:
    global TOKENS, JWKS
    TOKENS, JWKS = tokens()
    cases = load_corpus(quick)
    groups: dict[tuple[str, tuple[str, ...]], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.policy, case.options), []).append(case)
    with tempfile.TemporaryDirectory(prefix="compat-") as tmp:
        for (policy, options), group in sorted(groups.items()):
            await run_policy(policy, options, group, Path(tmp))
    return [compare(case) for case in cases]


def report(results: list[Result], out: Path) -> int:
    by_source: dict[str, int] = {}
    for r in results:
        by_source[r.case.source] = by_source.get(r.case.source, 0) + 1
    print(f"{'case':<58} {'plugin':<22} {'ours':<22} differences")
    for r in results:
        shown = "same" if not r.differences else ", ".join(r.unexplained + [w + " (allowed)" for w in r.explained])
        sides = f"{_outcome(r.case.request['plugin']):<22} {_outcome(r.case.request['ours']):<22}"
        print(f"{r.case.name[:58]:<58} {sides} {shown[:120]}")
    unexplained = [r for r in results if r.unexplained]
    explained = [r for r in results if r.explained and not r.unexplained]
    print(
        f"\n{len(results)} CheckRequests ({', '.join(f'{n} {s}' for s, n in sorted(by_source.items()))}): "
        f"{len(results) - len(unexplained) - len(explained)} identical, {len(explained)} with allowed differences, "
        f"{len(unexplained)} with unexplained differences"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cases": len(results),
                "by_source": by_source,
                "identical": len(results) - len(unexplained) - len(explained),
                "allowed_differences": {f"{c} | {f}": r for (c, f), r in ALLOWED.items()},
                "results": [
                    {
                        "case": r.case.name,
                        "source": r.case.source,
                        "plugin": _outcome(r.case.request["plugin"]),
                        "ours": _outcome(r.case.request["ours"]),
                        "differences": [{"field": f, "plugin": p, "ours": o} for f, p, o in r.differences],
                        "unexplained": r.unexplained,
                    }
                    for r in results
                ],
            },
            indent=1,
        )
    )
    print(f"written {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 1 if unexplained else 0


def _outcome(response: dict[str, Any]) -> str:
    if "rpc_error" in response:
        return "error (no decision)"
    denied = response.get("denied_response", {})
    if response["grpc_code"] == 0:
        return "allow" + (" (bare)" if response["http_response"] is None else "")
    return f"deny {denied.get('status', {}).get('code', 403)}" + (
        " (bare)" if response["http_response"] is None else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the corpus cases marked quick")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report (default bench/results/compat[-quick].json)"
    )
    args = parser.parse_args(argv)
    if shutil.which("opa-envoy-plugin") is None:
        print("compat: opa-envoy-plugin is not on PATH (./taskw builds it into .tools/bin)", file=sys.stderr)
        return 2
    results = asyncio.run(run(args.quick))
    return report(results, args.out or RESULTS / ("compat-quick.json" if args.quick else "compat.json"))


if __name__ == "__main__":
    sys.exit(main())
