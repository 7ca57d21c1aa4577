"""``./taskw bench-profile``: where the sidecar, or its OPA, spends its time under the benchmark mix.

Brings up one sidecar setup (HTTP or gRPC mode) and drives the mix with wrk.

- ``--process sidecar`` (the default) samples the sidecar process with py-spy (a sampling
  profiler in its own process: the sidecar runs unmodified). Writes py-spy's collapsed stacks (for
  speedscope or flamegraph.pl) and prints the functions with the most samples, inclusive and self.
- ``--process opa`` runs that OPA with ``--pprof`` (this benchmark's OPA only; no shipped one
  serves it) and fetches a CPU profile from its ``/debug/pprof/profile``. Writes the profile
  (``go tool pprof`` reads it) and prints OPA's CPU by part of a query: evaluation, decision log,
  input decoding, garbage collection, the rest.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.load import run_wrk
from bench.mix import READER, TOKEN_TTL, WRITER, BenchRequest, request_mix
from bench.run import RESULTS
from bench.setups import SidecarSetup, policy_bundle
from devstack.stack import DEFAULT_BUNDLE
from devstack.tools import find_tool
from sidecar.unix_http import unix_request


def summarise(collapsed: str, top: int = 25) -> str:
    """Inclusive and self sample counts per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "inclusive, the sidecar's own functions:"]
    ours = [(frame, n) for frame, n in inclusive.most_common() if "sidecar/" in frame][:top]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in ours]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


# OPA's CPU by part of a query: the first part whose pattern a sample's stack matches. A decision-log
# event evaluates the mask policy (topdown frames under plugins/logs), so the log is matched first.
OPA_PARTS = (
    ("decision log (mask, event, console)", ("plugins/logs.",)),
    ("input decoding", ("server.readInputPostV1",)),
    ("answer encoding", ("server/writer.",)),
    ("policy evaluation", ("/topdown.", "rego.PreparedEvalQuery", "rego.(*Rego)")),
    ("garbage collection (background)", ("runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge")),
)


def opa_parts(traces: str) -> dict[str, float]:
    """Seconds of samples per part of :data:`OPA_PARTS` (and ``other``) from ``go tool pprof -traces``."""
    parts = {name: 0.0 for name, _ in OPA_PARTS} | {"other": 0.0}
    for block in traces.split("-----------+")[1:]:
        lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
        if not lines or lines[0].startswith("-"):
            continue
        value, _, first = lines[0].partition(" ")
        frames = [first.strip(), *lines[1:]]
        seconds = _seconds(value)
        part = next((name for name, marks in OPA_PARTS if any(m in f for f in frames for m in marks)), "other")
        parts[part] += seconds
    return parts


def _seconds(value: str) -> float:
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * scale
    raise ValueError(f"not a pprof duration: {value!r}")


def summarise_opa(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    lines = [f"{total:.2f} s of OPA's CPU sampled", ""]
    lines += [f"  {seconds / total:6.1%}  {name}" for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def _load(setup: SidecarSetup, mix: list[BenchRequest], args: argparse.Namespace, tmp: Path) -> threading.Thread:
    """The mix at ``args.connections`` in the background, a little longer than the profile."""
    load = threading.Thread(target=run_wrk, args=(setup.url, mix, args.connections, args.seconds + 2, tmp), daemon=True)
    load.start()
    return load


def profile_sidecar(
    setup: SidecarSetup, py_spy: str, mix: list[BenchRequest], args: argparse.Namespace, tmp: Path
) -> str:
    """py-spy's samples of the sidecar under the mix: collapsed stacks saved, summarised."""
    pid = setup.stack.processes["sidecar"].pid
    raw = args.out / f"profile-{args.mode}.collapsed"
    record = [py_spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", "250"]
    record.append("--gil")  # samples of the thread holding the GIL: where CPU time goes
    load = _load(setup, mix, args, tmp)
    subprocess.run([*record, "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
    load.join()
    return summarise(raw.read_text())


def profile_opa(setup: SidecarSetup, mix: list[BenchRequest], args: argparse.Namespace, tmp: Path) -> str:
    """A CPU profile of the setup's OPA under the mix: saved beside the results, summarised by part."""
    load = _load(setup, mix, args, tmp)
    answer = unix_request(
        setup.stack.opa_socket, "GET", f"/debug/pprof/profile?seconds={args.seconds}", timeout=args.seconds + 30
    )
    load.join()
    if answer.status_code != 200:
        raise RuntimeError(f"OPA's pprof answered {answer.status_code}: {answer.text[:200]}")
    raw = args.out / f"profile-opa-{args.mode}.pprof"
    raw.write_bytes(answer.content)
    go = shutil.which("go")
    if go is None:
        return f"bench-profile: wrote {raw}; Go's pprof (go tool pprof) is not installed to read it"
    traces = subprocess.run(
        [go, "tool", "pprof", "-traces", find_tool("opa"), str(raw)], check=True, capture_output=True, text=True
    ).stdout
    return summarise_opa(opa_parts(traces))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--mode", choices=["http", "grpc"], default="http")
    parser.add_argument("--process", choices=["sidecar", "opa"], default="sidecar")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None and args.process == "sidecar":
        print("bench-profile: py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="authz-profile-") as tmp:
        bundle = policy_bundle(DEFAULT_BUNDLE, Path(tmp) / "bundle")  # session limits out of reach
        setup = SidecarSetup(Path(tmp) / "sidecar", bundle, args.mode, opa_pprof=args.process == "opa")
        setup.start()
        try:
            td = setup.stack.trust_domain
            grant = setup.open_task(WRITER, "triage", ["tickets:write"])
            mix = request_mix(td.mint_jwt(READER, ttl=TOKEN_TTL), td.mint_jwt(WRITER, ttl=TOKEN_TTL), grant["token"])
            run_wrk(setup.url, mix, args.connections, 3, Path(tmp))  # warm-up
            if args.process == "opa":
                name, text = f"profile-opa-{args.mode}.txt", profile_opa(setup, mix, args, Path(tmp))
            else:
                assert py_spy is not None
                name, text = f"profile-{args.mode}.txt", profile_sidecar(setup, py_spy, mix, args, Path(tmp))
        finally:
            setup.stop()
    (args.out / name).write_text(text)
    print(text)
    print(f"bench-profile: wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
