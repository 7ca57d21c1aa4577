"""``authz-sidecar policy``: a policy author's and a security reviewer's tools on recorded decisions.

events.py reads OPA's own decision-log events (console lines or the receiver's JSON lines);
engine.py runs a real ``opa`` on a bundle and finds which input fields a policy can read;
replay.py re-decides every recorded input with a candidate bundle and reports what changed;
explain.py re-runs one decision with ``opa eval --explain=full`` and keeps the policy's own lines;
command.py is the CLI.
"""
