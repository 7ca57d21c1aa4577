"""Collect every secret the test session used and every log its stacks wrote; find secrets in logs.

Wired up by tests/conftest.py for the whole session: each ``Stack`` registers its logs directory
when it starts (and archives a copy when it stops, so a test's tmp dir may go), its keys and
secrets are read from its workdir, and every JWT a test sends or receives (``requests``) or mints
(``DevTrustDomain.mint_jwt``, ``DevOidcIssuer.mint``) is recorded. The scan then looks through
every log line for those secrets, and for any signed JWT at all: no log may hold a credential.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A signed compact JWS (the signature part is what makes it a credential).
SIGNED_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.([A-Za-z0-9_-]{32,})")
# Runs of base64/base64url characters: how a secret appears in a log line, whatever quotes it.
WORD = re.compile(r"[A-Za-z0-9_\-+/]{20,}")
MIN_SECRET = 20
KEY_FILE_MAX = 64 * 1024


@dataclass
class Finding:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


@dataclass
class SecretLedger:
    archive: Path
    secrets: dict[str, str] = field(default_factory=dict)  # secret text -> what it is
    live: dict[int, Path] = field(default_factory=dict)  # running stacks' logs directories
    archived: list[Path] = field(default_factory=list)
    stacks_seen: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # -- recording ----------------------------------------------------------------------------
    def add(self, secret: str, what: str) -> None:
        secret = secret.strip().rstrip("=")
        if len(secret) >= MIN_SECRET:
            with self._lock:
                self.secrets.setdefault(secret, what)

    def harvest(self, text: str, what: str) -> None:
        """Record the signature of every signed JWT in ``text``."""
        if "eyJ" not in text:
            return
        for match in SIGNED_JWT.finditer(text):
            self.add(match.group(1), f"{what} (JWT signature)")

    def add_key_material(self, root: Path, what: str) -> None:
        """Private keys (every base64 line) and secret files under ``root``."""
        for path in root.rglob("*"):
            if not path.is_file() or path.suffix == ".log" or path.stat().st_size > KEY_FILE_MAX:
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if "PRIVATE KEY" in text:
                for line in text.splitlines():
                    if not line.startswith("-----"):
                        self.add(line, f"{what}: private key {path.name}")
            elif "secret" in path.name and "\n" not in text.strip():
                self.add(text, f"{what}: secret file {path.name}")

    def stack_started(self, stack: Any) -> None:
        with self._lock:
            self.live[id(stack)] = stack.logs
            self.stacks_seen += 1
        self.add_key_material(stack.workdir, f"stack {stack.workdir.name}")

    def stack_stopped(self, stack: Any) -> None:
        with self._lock:
            logs = self.live.pop(id(stack), None)
            if logs is None or not logs.is_dir():
                return
            target = self.archive / f"{len(self.archived):03d}-{stack.workdir.name}"
            self.archived.append(target)
        self.add_key_material(stack.workdir, f"stack {stack.workdir.name}")  # keys minted while it ran
        shutil.copytree(logs, target, dirs_exist_ok=True)

    # -- scanning ---------------------------------------------------------------------------
    def log_files(self) -> list[Path]:
        with self._lock:
            dirs = [*self.archived, *self.live.values()]
        return sorted({p for d in dirs if d.is_dir() for p in d.rglob("*") if p.is_file()})

    def scan(self) -> list[Finding]:
        findings: list[Finding] = []
        secrets = dict(self.secrets)
        for path in self.log_files():
            text = path.read_text(errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                line = line.replace("\\n", "\n").replace("\\/", "/")
                for match in SIGNED_JWT.finditer(line):
                    findings.append(Finding(str(path), number, "a signed JWT: " + match.group(0)[:24] + "…"))
                for word in WORD.findall(line):
                    what = secrets.get(word.rstrip("="))
                    if what is not None:
                        findings.append(Finding(str(path), number, what))
        return findings


def watch(patch: Any, ledger: SecretLedger) -> None:
    """Patch the places secrets and logs come from so ``ledger`` sees them (``patch``: a MonkeyPatch)."""
    import requests

    from devstack.oidc import DevOidcIssuer
    from devstack.stack import Stack
    from devstack.trust_domain import DevTrustDomain

    start, stop, send = Stack.start, Stack.stop, requests.Session.send
    mint_jwt, mint_oidc = DevTrustDomain.mint_jwt, DevOidcIssuer.mint

    def started(self: Stack) -> None:
        ledger.stack_started(self)  # before start: a start that fails has logs worth scanning too
        start(self)

    def stopped(self: Stack) -> None:
        stop(self)
        ledger.stack_stopped(self)

    def sent(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        for name, value in request.headers.items():
            ledger.harvest(str(value), f"request header {name}")
        response = send(self, request, **kw)
        kind = response.headers.get("content-type", "")
        if not kw.get("stream") and ("json" in kind or "text" in kind) and len(response.content) < 1_000_000:
            ledger.harvest(response.text, f"response from {request.url}")
        return response

    def minted_jwt(self: DevTrustDomain, *args: Any, **kw: Any) -> str:
        token: str = mint_jwt(self, *args, **kw)
        ledger.harvest(token, "JWT-SVID minted by the dev trust domain")
        return token

    def minted_oidc(self: DevOidcIssuer, *args: Any, **kw: Any) -> str:
        token: str = mint_oidc(self, *args, **kw)
        ledger.harvest(token, "OIDC ID token minted by the dev issuer")
        return token

    patch.setattr(Stack, "start", started)
    patch.setattr(Stack, "stop", stopped)
    patch.setattr(requests.Session, "send", sent)
    patch.setattr(DevTrustDomain, "mint_jwt", minted_jwt)
    patch.setattr(DevOidcIssuer, "mint", minted_oidc)
