"""What ``authz-sidecar serve`` loads: libraries only a mode that is off needs stay unimported (RSS)."""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded only when their mode is on: redis-py for the Redis store, requests for the approvals CLI.
NOT_FOR_SERVE = ("redis", "requests", "urllib3")


def test_serve_with_the_memory_store_imports_no_redis_and_no_requests() -> None:
    code = (
        "import json, sys; import sidecar.cli, sidecar.server, sidecar.logs; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    # A fresh interpreter: this test process has imported everything already.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    loaded = set(json.loads(out))
    assert "aiohttp" in loaded  # the probe did import the server
    assert loaded.isdisjoint(NOT_FOR_SERVE), sorted(loaded & set(NOT_FOR_SERVE))


def test_the_redis_store_is_still_built_when_chosen() -> None:
    from sidecar.config import load_config
    from sidecar.server import make_store

    config = load_config(None)
    config = config.model_copy(update={"state": config.state.model_copy(update={"backend": "redis"})})
    from sidecar.state.instrumented import InstrumentedStore

    store = make_store(config)
    assert isinstance(store, InstrumentedStore)  # measured (authz_state_store_*), around:
    assert type(store.inner).__name__ == "RedisStore"
