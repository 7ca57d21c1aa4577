"""``authz-sidecar audit``: reconstruct what agents did, and why each step was allowed, from logs.

sources.py reads the sidecar's JSON log, OPA's decision logs and the upstream's access log;
chain.py joins them by decision id into ordered chains per task or agent; render.py writes a
table, JSON or a self-contained HTML report; command.py is the CLI.
"""

from sidecar.audit.chain import Audit, Chain, reconstruct
from sidecar.audit.sources import read_logs

__all__ = ["Audit", "Chain", "read_logs", "reconstruct"]
