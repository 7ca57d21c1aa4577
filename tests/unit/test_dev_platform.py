"""Unit tests: decision-log receiver, bundle service, OPA config, SDS rewrite, Workload API bundles."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from spiffe import TrustDomain

from devstack import svid_files
from devstack.bundles import BUNDLE_NAME, KEY_ID, opa_config
from devstack.envoy_config import render_envoy_config
from sidecar.identity.bundles import WorkloadApiBundleSource
from sidecar.policy.bundle import SigningKey
from sidecar.services import bundle_server, decision_log_receiver
from sidecar.services.decision_log_receiver import BatchError, decode_batch
from sidecar.services.service_token import read_token


def test_decode_batch_gzip_and_plain() -> None:
    events = [{"decision_id": "a"}, {"decision_id": "b"}]
    assert decode_batch(gzip.compress(json.dumps(events).encode()), "gzip") == events
    assert decode_batch(json.dumps(events).encode(), "") == events


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"not gzip", "gzip"),
        (gzip.compress(b"{}"), "gzip"),  # an object, not an array
        (gzip.compress(b"[1, 2]"), "gzip"),  # not events
        (b"[{]", ""),
        (b"[]", "br"),
    ],
)
def test_decode_batch_rejects_bad_uploads(body: bytes, encoding: str) -> None:
    with pytest.raises(BatchError):
        decode_batch(body, encoding)


def test_decode_batch_refuses_decompression_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_log_receiver, "MAX_BATCH_BYTES", 1024)
    with pytest.raises(BatchError, match="too large"):
        decode_batch(gzip.compress(b"[" + b" " * 4096 + b"]"), "gzip")


async def test_receiver_writes_one_line_per_event() -> None:
    sink = io.StringIO()
    server = TestServer(decision_log_receiver.make_app(sink))
    await server.start_server(auto_decompress=False)  # as run_receiver: gunzip in decode_batch, bounded
    async with TestClient(server) as client:
        body = gzip.compress(json.dumps([{"decision_id": "a"}, {"decision_id": "b"}]).encode())
        ok = await client.post("/logs", data=body, headers={"content-encoding": "gzip"})
        assert ok.status == 200
        bad = await client.post("/logs", data=b"garbage", headers={"content-encoding": "gzip"})
        assert bad.status == 400  # OPA keeps the batch and retries
    assert [json.loads(line)["decision_id"] for line in sink.getvalue().splitlines()] == ["a", "b"]


async def test_bundle_server_etag_and_atomic_publish(tmp_path: Path) -> None:
    source = tmp_path / "built.tar.gz"
    source.write_bytes(b"bundle-v1")
    bundle_server.publish(source, tmp_path / "srv", BUNDLE_NAME)
    async with TestClient(TestServer(bundle_server.make_app(tmp_path / "srv"))) as client:
        first = await client.get(f"/bundles/{BUNDLE_NAME}.tar.gz")
        assert first.status == 200 and await first.read() == b"bundle-v1"
        etag = first.headers["ETag"]
        unchanged = await client.get(f"/bundles/{BUNDLE_NAME}.tar.gz", headers={"If-None-Match": etag})
        assert unchanged.status == 304
        source.write_bytes(b"bundle-v2, longer")
        bundle_server.publish(source, tmp_path / "srv", BUNDLE_NAME)
        changed = await client.get(f"/bundles/{BUNDLE_NAME}.tar.gz", headers={"If-None-Match": etag})
        assert changed.status == 200 and await changed.read() == b"bundle-v2, longer"
        # Raw request targets: the test client would remove the dot segments before sending.
        (tmp_path / "srv" / "secret.key").write_bytes(b"not-for-opa")
        for target in ["/bundles/../secret.key", "/bundles/%2e%2e/secret.key", "/bundles/..%2fsecret.key"]:
            status, answer = await _raw_get(client.server.host, client.server.port, target)
            assert status in (403, 404) and b"not-for-opa" not in answer, (target, status)
    assert not list((tmp_path / "srv" / "bundles").glob(".*.tmp"))


@pytest.mark.parametrize("service", ["bundles", "decision-logs"])
async def test_opas_services_demand_its_bearer_token(tmp_path: Path, service: str) -> None:
    """An agent can reach these services over the network: without OPA's token it gets nothing."""
    token_file = tmp_path / "token"
    token_file.write_text("opa-only-token\n")
    token = read_token(token_file)
    if service == "bundles":
        source = tmp_path / "built.tar.gz"
        source.write_bytes(b"policy")
        bundle_server.publish(source, tmp_path / "srv", BUNDLE_NAME)
        app, method, target = bundle_server.make_app(tmp_path / "srv", token), "GET", f"/bundles/{BUNDLE_NAME}.tar.gz"
    else:
        app, method, target = decision_log_receiver.make_app(io.StringIO(), token), "POST", "/logs"
    async with TestClient(TestServer(app)) as client:
        for presented in [None, "Bearer wrong", "Bearer opa-only", "Basic opa-only-token", "Bearer opa-only-token x"]:
            headers = {"authorization": presented} if presented else {}
            refused = await client.request(method, target, headers=headers, data=b"[]")
            assert refused.status == 401, presented
        allowed = await client.request(method, target, headers={"authorization": "Bearer opa-only-token"}, data=b"[]")
        assert allowed.status == 200
        assert (await client.get("/healthz")).status == 200, "probes need no token"
    token_file.write_text("  \n")
    with pytest.raises(ValueError, match="holds no token"):
        read_token(token_file)


async def _raw_get(host: str, port: int | None, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (status, whole answer)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: bundles\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(answer.split(b" ", 2)[1]), answer


def test_opa_config_verifies_signatures(tmp_path: Path) -> None:
    key = SigningKey.ensure(tmp_path)
    config = opa_config(bundle_service_url="http://b", public_key=key.public, decision_log_url="http://d")
    bundle = config["bundles"][BUNDLE_NAME]
    assert bundle["signing"]["keyid"] == KEY_ID and "BEGIN PUBLIC KEY" in config["keys"][KEY_ID]["key"]
    assert config["decision_logs"]["service"] == "decision_logs" and config["status"]["prometheus"] is True
    assert key.private.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        opa_config(bundle_service_url="http://b", public_key=None, decision_log_url=None)


def test_use_sds_files_rewrites_only_the_mtls_listener(tmp_path: Path) -> None:
    values: dict[str, object] = {name: 1 for name in ("EGRESS_PORT", "INGRESS_PORT", "UPSTREAM_PORT")}
    values.update(
        RUN_DIR="/run/authz",
        MAX_BODY_BYTES=1024,
        SERVER_CERT="/c",
        SERVER_KEY="/k",
        TRUST_BUNDLE="/b",
        TRUST_DOMAIN="demo.local",
        XFCC_SECRET="s" * 20,
    )
    config = yaml.safe_load(svid_files.use_sds_files(render_envoy_config(values), "ingress_mtls", tmp_path))
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    tls = listeners["ingress_mtls"]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert "tls_certificates" not in tls
    assert tls["tls_certificate_sds_secret_configs"][0]["name"] == svid_files.CERT_SECRET
    combined = tls["combined_validation_context"]
    assert combined["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
        "prefix": "spiffe://demo.local/"
    }
    assert combined["validation_context_sds_secret_config"]["sds_config"]["path_config_source"]["path"] == str(
        svid_files.bundle_file(tmp_path)
    )
    assert config["node"]["id"]
    with pytest.raises(ValueError):
        svid_files.use_sds_files(render_envoy_config(values), "no-such-listener", tmp_path)


def test_workload_api_source_without_a_socket_trusts_nothing(tmp_path: Path) -> None:
    source = WorkloadApiBundleSource(f"unix://{tmp_path}/missing.sock", timeout_s=0.2, retry_s=0.1)
    try:
        assert source.ready() is False
        assert source.bundle_for(TrustDomain("demo.local")) is None
    finally:
        source.close()


def test_spire_cli_json_is_read_in_either_field_style() -> None:
    from devstack.spire import AUTHORITY_ID, _find_key

    assert _find_key({"prepared_authority": {"authority_id": "a1"}}, AUTHORITY_ID) == "a1"
    assert _find_key({"prepared": {"authorityId": "b2", "expiresAt": "1"}}, AUTHORITY_ID) == "b2"
    assert _find_key({"nothing": [1, {"x": 2}]}, AUTHORITY_ID) is None
