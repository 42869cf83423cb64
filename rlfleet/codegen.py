"""Regenerates the Python wire code in `rlfleet/v1/` from `proto/rlfleet/v1/*.proto`: `python -m rlfleet.codegen [--check]`.

The generated package is never edited by hand. `--check` regenerates into a temporary folder and
fails (exit 1) if the committed code differs, which CI runs so that a proto change without a
regeneration cannot land. The output depends on the grpcio-tools version, pinned in the dev extra.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = ROOT / "rlfleet" / "v1"
INIT = '"""Generated from proto/rlfleet/v1 by `python -m rlfleet.codegen`; do not edit."""\n'


def generate(out_root: Path) -> Path:
    """Runs protoc (from grpcio-tools) over every proto file; returns the generated package folder."""
    from grpc_tools import protoc  # dev dependency; imported here so the runtime never needs it

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    package = out_root / "rlfleet" / "v1"
    (package / "__init__.py").write_text(INIT)
    return package


def _same_tree(a: Path, b: Path) -> list[str]:
    names = sorted({p.name for p in a.glob("*.py*")} | {p.name for p in b.glob("*.py*")})
    return [n for n in names if not ((a / n).exists() and (b / n).exists() and filecmp.cmp(a / n, b / n, shallow=False))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlfleet.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if rlfleet/v1 is stale instead of rewriting it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            stale = _same_tree(fresh, OUT_PACKAGE)
            if stale:
                print("generated code is stale; run `python -m rlfleet.codegen`. Differs: " + ", ".join(stale))
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(OUT_PACKAGE, ignore_errors=True)
        shutil.copytree(fresh, OUT_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"wrote {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
