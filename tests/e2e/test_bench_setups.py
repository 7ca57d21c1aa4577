"""The benchmark's four setups start and answer its mix as expected (``./taskw bench``'s pre-flight).

Nothing is timed here; this only keeps the bench runnable: a setup the pre-flight leaves out
(e.g. Envoy-direct answering 503 on the MCP route) makes every ratio of the report meaningless.
"""

from __future__ import annotations

from pathlib import Path

from bench.run import Bench, Plan
from devstack.stack import OPA_ENV


def test_every_setup_answers_the_mix_as_expected(tmp_path: Path) -> None:
    bench = Bench(Plan.quick(), tmp_path, quick=True)
    try:
        bench.start()
        bench.check()
        assert sorted(bench.setups) == ["envoy-direct", "opa-envoy-plugin", "sidecar-grpc", "sidecar-http"], (
            bench.results.notes
        )
        # Both kinds of OPA run with the same Go runtime settings, or the comparison measures those.
        for name, setup in bench.setups.items():
            for process_name in ("opa", "opa-envoy-plugin"):
                if process_name in setup.stack.processes:
                    pid = setup.stack.processes[process_name].pid
                    environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
                    assert {f"{k}={v}".encode() for k, v in OPA_ENV.items()} <= environ, (name, process_name)
    finally:
        bench.stop()
