"""One atheris target in this process: ``python -m tools.fuzz.atheris_one NAME [libFuzzer args]``.

The sidecar's modules are imported under atheris' instrumentation so the fuzzer is guided by
coverage of our parsers; the target's seeds are written into the corpus directory first.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from tools.fuzz.targets import TARGETS, seeds


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    corpus = [Path(a) for a in args if not a.startswith("-")]
    for directory in corpus[:1]:
        for seed in seeds(name):
            (directory / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}").write_bytes(seed)
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
