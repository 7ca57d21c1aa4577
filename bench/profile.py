"""``./taskw bench-profile``: where the sidecar spends its time under the benchmark mix.

Brings up one sidecar setup (HTTP or gRPC mode), drives the mix with wrk and samples the sidecar
process with py-spy (a sampling profiler in its own process: the sidecar runs unmodified).
Writes py-spy's collapsed stacks (for speedscope or flamegraph.pl) and prints the functions with
the most samples, inclusive and self.
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
from bench.mix import READER, TOKEN_TTL, WRITER, request_mix
from bench.run import RESULTS
from bench.setups import SidecarSetup, policy_bundle
from devstack.stack import DEFAULT_BUNDLE


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--mode", choices=["http", "grpc"], default="http")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("bench-profile: py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="authz-profile-") as tmp:
        bundle = policy_bundle(DEFAULT_BUNDLE, Path(tmp) / "bundle")  # session limits out of reach
        setup = SidecarSetup(Path(tmp) / "sidecar", bundle, args.mode)
        setup.start()
        try:
            td = setup.stack.trust_domain
            grant = setup.open_task(WRITER, "triage", ["tickets:write"])
            mix = request_mix(td.mint_jwt(READER, ttl=TOKEN_TTL), td.mint_jwt(WRITER, ttl=TOKEN_TTL), grant["token"])
            run_wrk(setup.url, mix, args.connections, 3, Path(tmp))  # warm-up
            pid = setup.stack.processes["sidecar"].pid
            raw = args.out / f"profile-{args.mode}.collapsed"
            record = [py_spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", "250"]
            record.append("--gil")  # samples of the thread holding the GIL: where CPU time goes
            load = threading.Thread(
                target=run_wrk, args=(setup.url, mix, args.connections, args.seconds + 2, Path(tmp)), daemon=True
            )
            load.start()
            subprocess.run([*record, "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
            load.join()
            text = summarise(raw.read_text())
        finally:
            setup.stop()
    (args.out / f"profile-{args.mode}.txt").write_text(text)
    print(text)
    print(f"bench-profile: wrote {args.out / f'profile-{args.mode}.txt'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
