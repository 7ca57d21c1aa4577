"""Gauges read at scrape time: the policy bundle OPA runs (revision, age) and pending approvals.

Read from OPA's Status API and the state store when Prometheus scrapes ``/metrics`` (both local and
cheap), so they are never stale and cost nothing between scrapes. When a source cannot say, its
gauges are left out (bundle) or kept (pending) and ``authz_status_errors_total{source}`` counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sidecar import metrics
from sidecar.opa import OpaClient
from sidecar.state import Store, StoreError

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 2.0  # a scrape must answer even when OPA or the store hangs


async def refresh(opa: OpaClient, store: Store | None) -> None:
    """Update the scrape-time gauges; never raises."""
    await _bundles(opa)
    if store is not None:
        await _pending(store)


async def _bundles(opa: OpaClient) -> None:
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            status = await opa.bundle_status()
    except TimeoutError:
        status = None
    # Series of a revision no longer active must go: clear, then set what OPA reports now.
    for gauge in (metrics.BUNDLE_INFO, metrics.BUNDLE_AGE, metrics.BUNDLE_CHECK_AGE):
        gauge.clear()
    if status is None:
        metrics.STATUS_SCRAPE_ERRORS.labels("opa").inc()
        return
    now = time.time()
    for name, bundle in status.items():
        metrics.BUNDLE_INFO.labels(name, bundle.revision).set(1)
        if bundle.activated_at is not None:
            metrics.BUNDLE_AGE.labels(name).set(max(0.0, now - bundle.activated_at))
        if bundle.last_success_at is not None:
            metrics.BUNDLE_CHECK_AGE.labels(name).set(max(0.0, now - bundle.last_success_at))


async def _pending(store: Store) -> None:
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            pending = await store.list_approvals("pending")
    except (TimeoutError, StoreError):
        metrics.STATUS_SCRAPE_ERRORS.labels("store").inc()
        return
    metrics.APPROVALS_PENDING.set(len(pending))
