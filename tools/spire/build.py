#!/usr/bin/env python3
"""Build spire-server and spire-agent at a pinned version from the Go module proxy.

Route 1: ``go install github.com/spiffe/spire/cmd/{spire-server,spire-agent}@VERSION``.
Route 2, when Go refuses route 1 because SPIRE's go.mod has ``replace`` directives (``go
install module@version`` does not allow them): a throwaway module that requires SPIRE at the
same version and carries SPIRE's own replace directives (read from its go.mod in the module
cache, local paths pointed into that module's directory), then ``go build`` of the two
commands. Both routes build from the module proxy only; SPIRE needs cgo (SQLite), so a C
compiler must be installed. Called by ./taskw (``./taskw spire``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODULE = "github.com/spiffe/spire"
COMMANDS = [f"{MODULE}/cmd/spire-server", f"{MODULE}/cmd/spire-agent"]


def go(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the two binaries")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "1", "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -trimpath".strip()}

    info = go("mod", "download", "-json", f"{MODULE}@{args.version}")
    try:
        module = json.loads(info.stdout)
    except ValueError:
        module = {"Error": info.stderr.strip() or "no answer"}
    if module.get("Error"):
        print(f"spire: the Go module proxy does not serve {MODULE}@{args.version}: {module['Error']}", file=sys.stderr)
        return 1

    installed = go("install", *(f"{c}@{args.version}" for c in COMMANDS), env={**env, "GOBIN": str(out)})
    if installed.returncode == 0:
        print(f"spire: built with go install {MODULE}/cmd/...@{args.version}")
        return 0
    print(f"spire: go install refused ({installed.stderr.strip().splitlines()[-1:]}); building in a tools module")

    edit = json.loads(go("mod", "edit", "-json", module["GoMod"]).stdout)
    lines = [f"module local/spire-build\n\ngo {edit.get('Go', '1.22')}\n\nrequire {MODULE} {args.version}\n"]
    for rep in edit.get("Replace") or []:
        old = rep["Old"]["Path"] + (f" {rep['Old']['Version']}" if rep["Old"].get("Version") else "")
        new_path = rep["New"]["Path"]
        if new_path.startswith((".", "/")):  # a directory inside SPIRE's own module
            new = str((Path(module["Dir"]) / new_path).resolve())
        else:
            new = new_path + (f" {rep['New']['Version']}" if rep["New"].get("Version") else "")
        lines.append(f"replace {old} => {new}\n")
    with tempfile.TemporaryDirectory(prefix="spire-build-") as tmp:
        Path(tmp, "go.mod").write_text("".join(lines))
        # SPIRE's own go.sum pins every dependency's hash, so nothing needs the checksum database
        # (which does not know some of SPIRE's older dependencies).
        spire_sum = Path(module["Dir"]) / "go.sum"
        if spire_sum.exists():
            Path(tmp, "go.sum").write_text(spire_sum.read_text())
        built = go("build", "-mod=mod", "-o", f"{out}/", *COMMANDS, cwd=Path(tmp), env=env)
    if built.returncode != 0:
        print(f"spire: go build failed:\n{built.stderr}", file=sys.stderr)
        return 1
    print(f"spire: built {MODULE}@{args.version} in a tools module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
