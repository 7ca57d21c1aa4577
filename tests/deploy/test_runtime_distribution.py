"""The runtime distribution carries none of the local stack: its wheel holds only ``sidecar``, no
devstack, dev CA or demo module, and every module and entry point of it works with devstack not
importable. The image installs that distribution only, and the manifests run its entry points."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "authz-sidecar": "sidecar.cli:main",
    "authz-bundle-server": "sidecar.services.bundle_server:main",
    "authz-decision-log-receiver": "sidecar.services.decision_log_receiver:main",
}
# What the local stack defines (dev CA, demo, demo upstream, stack, SPIRE driver, dev OIDC issuer):
# none of it may be in the runtime wheel under any module name.
DEV_DEFINITIONS = re.compile(
    r"^(class (DevTrustDomain|DevOidcIssuer|Stack|Spire|Supervisor|RedisServer)\b|def (run_demo|run_upstream)\b)",
    flags=re.MULTILINE,
)
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".tools", ".dev", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench", "tests"
)

# Run in a fresh interpreter without site processing (-S: no .pth, so neither editable install is
# on the path) and without the working directory (-P): the unpacked wheel first, then the venv's
# third-party packages. `import devstack` must fail there, or the check below would prove nothing.
PROBE = """
import importlib, json, pkgutil, sys
import sidecar
assert sidecar.__file__.startswith(sys.argv[1]), sidecar.__file__
try:
    import devstack
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("devstack is importable: the probe cannot tell")
modules = [m.name for m in pkgutil.walk_packages(sidecar.__path__, "sidecar.") if m.name != "sidecar.__main__"]
for name in modules:
    importlib.import_module(name)
helps = {}
for script, target in json.loads(sys.argv[2]).items():
    module, _, function = target.partition(":")
    try:
        getattr(importlib.import_module(module), function)(["--help"])
    except SystemExit as exc:
        assert exc.code == 0, (script, exc.code)
    helps[script] = True
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "devstack" or m.startswith("sidecar.dev."))
print(json.dumps({"modules": len(modules), "helps": sorted(helps), "leaked": leaked}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime wheel, built by the declared backend from a copy of the checkout (the checkout's
    own build/ may hold stale files a build would pick up)."""
    source = tmp_path_factory.mktemp("source") / "repo"
    shutil.copytree(REPO, source, ignore=NOT_COPIED, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("authz_sidecar-*.whl")
    return built


def test_wheel_holds_only_the_runtime_package(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    (metadata,) = tops - {"sidecar"}
    assert metadata.startswith("authz_sidecar-") and metadata.endswith(".dist-info"), tops
    assert not [name for name in names if name.startswith("sidecar/dev/")], "the old sidecar/dev/ package"
    sources = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
    dev = {name: m.group(0) for name, text in sources.items() if (m := DEV_DEFINITIONS.search(text))}
    assert not dev, dev
    assert not [name for name, text in sources.items() if re.search(r"^\s*(from|import) devstack\b", text, re.M)]
    assert "sidecar/services/bundle_server.py" in names and "sidecar/policy/bundle.py" in names


def test_wheel_entry_points_are_the_runtime_commands(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    scripts = dict(re.findall(r"^(\S+)\s*=\s*(\S+)$", text.split("[console_scripts]")[1], flags=re.MULTILINE))
    assert scripts == ENTRY_POINTS


def test_runtime_imports_and_commands_work_without_devstack(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    third_party = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{site}:{third_party}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-S", "-P", "-c", PROBE, str(site), json.dumps(ENTRY_POINTS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == [] and report["helps"] == sorted(ENTRY_POINTS), report
    assert report["modules"] > 40, report  # every runtime module was imported, not an empty package
    assert "usage: authz-sidecar" in result.stdout and " dev " not in result.stdout.split("usage: authz-sidecar")[1]


def test_runtime_image_installs_only_the_runtime() -> None:
    text = (REPO / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    sources = {source for copy in copies for source in copy}
    locks = {"requirements/runtime.lock", "requirements/build.lock", "requirements/sbom.lock"}
    assert sources == {"pyproject.toml", "README.md", "sidecar"} | locks, sources
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "devstack" in line or "authz-dev" in line]
    assert any(re.search(r"pip install [^&]*\s\.(\s|$)", line) for line in instructions)


def _compileall(dockerfile: Path) -> list[str]:
    """The Dockerfile's ``python -m compileall`` arguments (its target left out), after it removed
    pip's ``__pycache__`` directories, in the same RUN."""
    text = dockerfile.read_text().replace("\\\n", " ")
    (run,) = [line for line in text.splitlines() if "-m compileall" in line]
    assert run.index("-name '__pycache__' -prune -exec rm -rf") < run.index("-m compileall"), run
    args = run.split("-m compileall", 1)[1].split("&&")[0].split()
    assert args[-1].startswith("/opt/") and args[-1].endswith("/lib"), args  # every installed module
    return args[:-1]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "devstack/Dockerfile"])
def test_images_ship_bytecode_whose_bytes_do_not_depend_on_the_build(
    dockerfile: str, wheel: Path, tmp_path: Path
) -> None:
    """Read-only, with PYTHONDONTWRITEBYTECODE: without .pyc in the image every start compiles what
    it imports. The image's own compileall, run twice on the runtime package with other file times,
    writes every module's .pyc, hash-based (PEP 552), with the same bytes."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    args = _compileall(REPO / dockerfile)
    builds = []
    for mtime in (1_000_000_000, 2_000_000_000):
        for cache in site.rglob("__pycache__"):
            shutil.rmtree(cache)
        for source in site.rglob("*.py"):
            os.utime(source, (mtime, mtime))
        subprocess.run([sys.executable, "-m", "compileall", *args, str(site)], check=True, timeout=300)
        builds.append({path.relative_to(site): path.read_bytes() for path in site.rglob("*.pyc")})
    sources = list(site.rglob("*.py"))
    assert len(builds[0]) == len(sources) > 40
    assert builds[0] == builds[1]
    flags = {int.from_bytes(data[4:8], "little") for data in builds[0].values()}
    assert flags == {0b11}, flags  # hash-based, checked against the source: never stale


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def test_manifests_run_the_runtime_entry_points() -> None:
    from tests.deploy.chart import render

    deployed = {}
    for doc in render("istio", {"services.enabled": True}):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in {"authz-bundles", "authz-decision-logs"}:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                deployed[doc["metadata"]["name"]] = (container["command"], container["args"][0])
    assert deployed == {
        "authz-bundles": (["authz-bundle-server"], "--dir"),
        "authz-decision-logs": (["authz-decision-log-receiver"], "--out"),
    }
    services = _compose()["services"]
    assert services["bundle-service"]["entrypoint"] == ["authz-bundle-server"]
    assert services["decision-log-receiver"]["entrypoint"] == ["authz-decision-log-receiver"]
    # Only the demo upstream comes from the devstack image; nothing runs the old `dev` subcommand.
    dev_built = {name for name, s in services.items() if "devstack" in json.dumps(s.get("build", ""))}
    assert dev_built == {"upstream"}
    assert not any(s.get("command", [None])[0] == "dev" for s in services.values())
