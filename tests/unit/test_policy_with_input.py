"""``with input as x`` replaces the input for one query: the replay's read analysis must not count
it as reading the whole input (that made every masked decision look read, rego/authzen/)."""

from __future__ import annotations

from pathlib import Path

from sidecar.policy.engine import Bundle

POLICY = """package p

inner := input.a.b

outer := x if {
	x := inner with input as {"a": {"b": input.c}}
}
"""


def test_a_with_target_is_not_a_read_but_its_value_is(tmp_path: Path, opa_bin: str) -> None:
    (tmp_path / "p.rego").write_text(POLICY)
    reads = {read.ref for read in Bundle(tmp_path).input_reads()}
    assert reads == {("a", "b"), ("c",)}
