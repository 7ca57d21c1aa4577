"""``./taskw fuzz``: run every fuzz target for a time budget (``FUZZ_SECONDS``, default 300, split evenly).

With atheris (the ``fuzz`` extra, which ``./taskw fuzz`` installs) each target runs coverage-guided
in its own process, seeded from ``targets.seeds``; a crash leaves its input in
``build/fuzz/<target>/`` and fails the run. Without atheris the same targets run under hypothesis
(random and structured bytes) for the same budget. A table of targets, executions and findings
is printed either way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "fuzz"


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(name: str, seconds: int) -> tuple[str, int, str]:
    """One target in a child process (atheris exits the process when it is done)."""
    workdir = OUT / name
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tools.fuzz.atheris_one", name, f"-max_total_time={seconds}", "-rss_limit_mb=2048"]
    argv += [f"-artifact_prefix={workdir}/", "-print_final_stats=1", str(corpus)]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    runs = 0
    for line in done.stderr.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            runs = int(line.split(":")[-1].strip())
    (workdir / "last-run.log").write_text(done.stderr[-20_000:])
    if done.returncode != 0:
        crash = next((line for line in done.stderr.splitlines() if "Test unit written to" in line), "")
        return "CRASH", runs, f"exit {done.returncode} after {time.monotonic() - started:.0f}s {crash}".strip()
    return "ok", runs, ""


def run_hypothesis(name: str, seconds: int) -> tuple[str, int, str]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tools.fuzz.targets import seeds

    target = TARGETS[name]
    runs = 0
    corpus = seeds(name)

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=4096), st.sampled_from(corpus).flatmap(_mutations)))
    def once(data: bytes) -> None:
        nonlocal runs
        runs += 1
        target(data)

    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            once()
    except Exception as exc:  # hypothesis re-raises the shrunk failing example's exception
        return "CRASH", runs, f"{type(exc).__name__}: {exc}"[:300]
    return "ok", runs, ""


def _mutations(seed: bytes):  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    return st.tuples(st.integers(0, len(seed)), st.integers(0, 16), st.binary(max_size=32)).map(
        lambda t: seed[: t[0]] + t[2] + seed[t[0] + t[1] :]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "300")))
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("targets", nargs="*", default=sorted(TARGETS))
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "hypothesis"
        if engine == "hypothesis":
            print("fuzz: atheris is not installed (pip install -e '.[fuzz]'); using hypothesis", file=sys.stderr)
    per_target = max(1, args.seconds // len(args.targets))
    results = []
    for name in args.targets:
        print(f"fuzz: {name} for {per_target}s with {engine}", file=sys.stderr, flush=True)
        runner = run_atheris if engine == "atheris" else run_hypothesis
        results.append((name, *runner(name, per_target)))
    print(f"\n{'target':<16} {'engine':<11} {'executions':>11}  result")
    for name, status, runs, detail in results:
        print(f"{name:<16} {engine:<11} {runs:>11}  {status} {detail}")
    return 0 if all(status == "ok" for _, status, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
