"""SPIFFE end to end: SVIDs from the Workload API, through Envoy, verified by the sidecar.

Runs against real SPIRE (server + agent, join-token node attestation, unix workload attestor)
when ``spire-server`` and ``spire-agent`` are built (``./taskw spire``), and always against
the test Workload API server (tests/e2e/workload_api.py), which speaks the same gRPC protocol.
The agents in these tests fetch their X.509- and JWT-SVIDs with the ``spiffe`` library; the
sidecar takes its JWT bundles from the Workload API and Envoy its mTLS certificate from it
(files written by ``authz-dev svid-files``, reloaded by Envoy as file-based SDS).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, WorkloadApiClient
from spiffe.svid.x509_svid import X509Svid

from devstack.spire import DEMO_IDS, ENVOY_ID, spire_binaries
from devstack.stack import Ports, Stack
from devstack.tools import ToolMissing
from devstack.trust_domain import DEFAULT_AUDIENCE, DevTrustDomain
from tests.e2e.workload_api import TestWorkloadApi

pytestmark = pytest.mark.e2e

READER, WRITER = DEMO_IDS[0], DEMO_IDS[1]


@dataclass
class Provider:
    """Where the SVIDs come from, and how to rotate its keys."""

    name: str
    socket: str
    rotate_jwt: Callable[[], tuple[str, str]]
    revoke_jwt: Callable[[str], None]
    rotate_x509: Callable[[], None] | None


@pytest.fixture(scope="module", params=["spire", "test-workload-api"])
def spiffe_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Unix socket paths are limited to ~107 bytes: keep them short.
    short = Path(tempfile.mkdtemp(prefix="spf-"))
    try:
        if request.param == "spire":
            try:
                spire_binaries()
            except ToolMissing as exc:
                pytest.skip(f"real SPIRE is not built here: {exc}")
            with Stack(short / "stack", Ports.free(), spire=True) as stack:
                spire = stack.spire_deployment
                assert spire is not None
                yield stack, Provider("spire", spire.workload_api, spire.rotate_jwt_authority,
                                      spire.revoke_jwt_authority, None)  # fmt: skip
        else:
            api = TestWorkloadApi(short / "workload.sock", "demo.local", [*DEMO_IDS, ENVOY_ID]).start()
            try:
                with Stack(short / "stack", Ports.free(), workload_api_socket=api.socket) as stack:
                    yield stack, Provider("test-workload-api", api.socket, api.rotate_jwt_key, api.revoke_jwt_key,
                                          api.rotate_x509)  # fmt: skip
            finally:
                api.stop()
    finally:
        shutil.rmtree(short, ignore_errors=True)


_audience_counter = iter(range(1, 1_000_000))


def jwt_svid(provider: Provider, spiffe_id: str) -> str:
    """A JWT-SVID from the Workload API. The extra audience makes SPIRE mint a new token
    rather than hand out one cached from before a key rotation."""
    client = WorkloadApiClient(provider.socket)
    try:
        audience = {DEFAULT_AUDIENCE, f"test-{next(_audience_counter)}"}
        token: str = client.fetch_jwt_svid(audience=audience, subject=SpiffeId(spiffe_id)).token
        return token
    finally:
        client.close()


def x509_svid(provider: Provider, spiffe_id: str) -> tuple[X509Svid, str]:
    """The workload's X.509-SVID for ``spiffe_id`` and its trust bundle (PEM)."""
    client = WorkloadApiClient(provider.socket)
    try:
        context = client.fetch_x509_context()
    finally:
        client.close()
    svid = next(s for s in context.x509_svids if str(s.spiffe_id) == spiffe_id)
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle.x509_authorities)
    return svid, pem


def get(stack: Stack, path: str, token: str, method: str = "GET") -> requests.Response:
    return requests.request(method, stack.egress_url + path, headers={"authorization": f"Bearer {token}"}, timeout=10)


def mtls_get(
    stack: Stack, path: str, chain_pem: bytes, key_pem: bytes, trusted_pem: str
) -> tuple[int, dict[str, Any], x509.Certificate]:
    """GET through the mTLS ingress; the status, JSON body and the certificate Envoy served."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "svid.pem"), Path(tmp, "svid.key")
        cert.write_bytes(chain_pem)
        key.write_bytes(key_pem)
        context = ssl.create_default_context(cadata=trusted_pem)
        context.check_hostname = False  # SPIFFE: the server is identified by its URI SAN, checked below
        context.load_cert_chain(cert, key)
        conn = http.client.HTTPSConnection("127.0.0.1", stack.ports.ingress, context=context, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
            assert conn.sock is not None
            served = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True) or b"")
            return response.status, body, served
        finally:
            conn.close()


def svid_pems(svid: X509Svid) -> tuple[bytes, bytes]:
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key


def uri_sans(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in names.get_values_for_type(x509.UniformResourceIdentifier)]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_real_svids_are_allowed_per_policy(spiffe_stack: tuple[Stack, Provider]) -> None:
    stack, provider = spiffe_stack
    ready = requests.get(f"{stack.sidecar_admin_url}/readyz", timeout=5).json()
    assert ready["ready"] is True and ready["jwt_bundles"] == "ok", ready

    reader = jwt_svid(provider, READER)
    allowed = get(stack, "/api/docs/handbook", reader)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["upstream_saw"]["spiffe_id"] == READER
    assert allowed.json()["upstream_saw"]["authorization_present"] is False
    assert get(stack, "/api/tickets", reader, method="POST").status_code == 403

    # X.509-SVID on the mTLS listener, whose own certificate also comes from the Workload API.
    svid, bundle = x509_svid(provider, WRITER)
    status, body, served = mtls_get(stack, "/api/docs/runbook", *svid_pems(svid), bundle)
    assert status == 200, body
    assert body["upstream_saw"]["spiffe_id"] == WRITER
    assert uri_sans(served) == [ENVOY_ID]


def test_jwt_bundle_rotation_is_picked_up_without_restart(spiffe_stack: tuple[Stack, Provider]) -> None:
    stack, provider = spiffe_stack
    sidecar_pid = stack.processes["sidecar"].pid
    before = jwt_svid(provider, READER)
    assert get(stack, "/api/docs/handbook", before).status_code == 200

    old, _ = provider.rotate_jwt()
    after = jwt_svid(provider, READER)
    header = json.loads(_b64(after.split(".")[0]))
    assert header["kid"] != json.loads(_b64(before.split(".")[0]))["kid"], "the new token is signed by the new key"
    # The sidecar learns the new key from the Workload API stream: the new token is accepted.
    wait_for(
        "a token signed by the new key to be accepted", lambda: get(stack, "/api/docs/a", after).status_code == 200
    )
    assert get(stack, "/api/docs/a", before).status_code == 200, "the old key stays trusted until revoked"

    provider.revoke_jwt(old)
    wait_for("the revoked key's tokens to be rejected", lambda: get(stack, "/api/docs/a", before).status_code == 401)
    rejected = get(stack, "/api/docs/a", before)
    assert "not in the trust bundle" in rejected.text or "signature" in rejected.text, rejected.text
    assert get(stack, "/api/docs/a", after).status_code == 200
    assert stack.processes["sidecar"].pid == sidecar_pid and stack.processes["sidecar"].poll() is None


# SPIRE rotates X.509-SVIDs at half their TTL (1 h here), so rotation is driven on the test server.
@pytest.mark.parametrize("spiffe_stack", ["test-workload-api"], indirect=True)
def test_envoy_certificate_rotation_is_reloaded(spiffe_stack: tuple[Stack, Provider]) -> None:
    stack, provider = spiffe_stack
    assert provider.rotate_x509 is not None
    envoy_pid = stack.processes["envoy"].pid
    svid, bundle = x509_svid(provider, WRITER)
    _, _, served_before = mtls_get(stack, "/api/docs/a", *svid_pems(svid), bundle)

    provider.rotate_x509()
    svid, bundle = x509_svid(provider, WRITER)  # a new client SVID and a bundle with both CAs

    def rotated() -> bool:
        try:  # until Envoy has reloaded the new bundle, it refuses the new client SVID
            status, _, served = mtls_get(stack, "/api/docs/a", *svid_pems(svid), bundle)
        except ssl.SSLError:
            return False
        return status == 200 and served.serial_number != served_before.serial_number

    wait_for("Envoy to serve the rotated certificate", rotated)
    assert stack.processes["envoy"].pid == envoy_pid


def test_svids_from_another_trust_domain_are_rejected(spiffe_stack: tuple[Stack, Provider], tmp_path: Path) -> None:
    stack, provider = spiffe_stack
    other = DevTrustDomain(tmp_path / "other", name="other.local").ensure()

    foreign = other.mint_jwt("spiffe://other.local/agent/reader")
    answer = get(stack, "/api/docs/handbook", foreign)
    assert answer.status_code == 401 and "other.local is not trusted" in answer.text, answer.text

    # A token that claims our trust domain but is signed by another domain's key.
    impostor = other.mint_jwt(READER)
    answer = get(stack, "/api/docs/handbook", impostor)
    assert answer.status_code == 401, answer.text

    # An X.509-SVID from another trust domain's CA: Envoy's mTLS listener refuses the handshake.
    files = other.mint_x509("spiffe://other.local/agent/writer", tmp_path / "other-svid")
    _, bundle = x509_svid(provider, WRITER)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        mtls_get(stack, "/api/docs/a", files.cert.read_bytes(), files.key.read_bytes(), bundle)


PROBE = Path(__file__).with_name("svid_probe.py")


def probe_workload_api(endpoint: str, user: pwd.struct_passwd | None = None) -> dict[str, Any]:
    """What ``tests/e2e/svid_probe.py`` gets from the Workload API, as us or as ``user``."""
    argv = [sys.executable, str(PROBE), endpoint]
    if user is not None:
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("spiffe_stack", ["spire"], indirect=True)
def test_only_the_trios_uid_gets_svids_from_spire(spiffe_stack: tuple[Stack, Provider]) -> None:
    """A process under another uid that reaches the Workload API socket gets no SVID at all.

    The stand-in for the agent is ``nobody``. Locally SPIRE's entries select the stack's user by
    ``unix:uid`` (in Kubernetes, the envoy and authz-sidecar containers by ``k8s:container-name``,
    the Helm chart's ClusterSPIFFEIDs), so workload attestation gives any other caller nothing. The socket's
    directories and the socket itself are opened to every uid here, so that ONLY attestation
    stops it: the probe connects (no file permission in the way) and the Workload API answers
    PermissionDenied to both the X.509-SVID and the JWT-SVID request.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("capability: running a client as another uid needs root and setpriv (util-linux)")
    stack, provider = spiffe_stack
    spire = stack.spire_deployment
    assert spire is not None
    agent = pwd.getpwnam("nobody")
    assert agent.pw_uid != os.getuid()

    ours = probe_workload_api(provider.socket)
    assert ours["connected"] and ours["x509"]["ok"] and ours["jwt"]["ok"], ours
    assert set(ours["x509"]["spiffe_ids"]) == {*DEMO_IDS, ENVOY_ID}, ours

    # Open the way to the socket for every uid: search (x) on its directories up to the temp
    # dir, read/write on the socket. Restored afterwards.
    socket = spire.workload_socket
    top = Path(tempfile.gettempdir()).resolve()
    opened = [d for d in socket.parents if d.is_relative_to(top) and d != top]
    modes = {path: path.stat().st_mode for path in [socket, *opened]}
    try:
        for directory in opened:
            directory.chmod(stat.S_IMODE(modes[directory]) | stat.S_IXOTH)
        socket.chmod(stat.S_IMODE(modes[socket]) | stat.S_IROTH | stat.S_IWOTH)
        theirs = probe_workload_api(provider.socket, agent)
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
    assert theirs["uid"] == agent.pw_uid, theirs
    assert theirs["connected"] is True, f"the socket must be reachable, so that only attestation refuses: {theirs}"
    for kind in ("x509", "jwt"):
        answer = theirs[kind]
        assert answer["ok"] is False and "spiffe_ids" not in answer, (kind, theirs)
        assert answer["code"] == "PERMISSION_DENIED", (kind, theirs)


def test_no_workload_api_yet_means_not_ready_and_tokens_rejected(tmp_path: Path) -> None:
    """The sidecar starts before the Workload API, is not ready and rejects JWT-SVIDs (401, not
    503 or a crash); when the Workload API comes up it connects by itself and becomes ready."""
    short = Path(tempfile.mkdtemp(prefix="spf-"))
    try:
        api = TestWorkloadApi(short / "workload.sock", "demo.local", [*DEMO_IDS])
        env = {
            "AUTHZ_IDENTITY__JWT_SVID__BUNDLE_FILES": "{}",
            "AUTHZ_IDENTITY__JWT_SVID__WORKLOAD_API_SOCKET": api.socket,
        }
        with Stack(tmp_path / "stack", Ports.free(), sidecar_env=env, wait_ready=False) as stack:
            ready = requests.get(f"{stack.sidecar_admin_url}/readyz", timeout=5)
            assert ready.status_code == 503 and "Workload API" in ready.json()["jwt_bundles"], ready.text
            dev_token = stack.trust_domain.mint_jwt(READER)
            assert get(stack, "/api/docs/handbook", dev_token).status_code == 401

            api.start()
            try:
                wait_for("ready", lambda: requests.get(f"{stack.sidecar_admin_url}/readyz", timeout=5).ok)
                provider = Provider("t", api.socket, api.rotate_jwt_key, api.revoke_jwt_key, None)
                assert get(stack, "/api/docs/handbook", jwt_svid(provider, READER)).status_code == 200
                assert get(stack, "/api/docs/handbook", dev_token).status_code == 401
            finally:
                api.stop()
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
