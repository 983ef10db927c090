"""Generating ``gossip/_proto`` from ``proto/gossip.proto`` with the pinned generator.

The generator is ``grpcio-tools`` (which bundles ``protoc``) plus ``mypy-protobuf``
for the ``.pyi`` stubs, both pinned in pyproject's ``dev`` extra: the generated
code's header names the protobuf version it was made for, so another generator
version produces different bytes (and may need a newer ``protobuf`` runtime).
After editing the .proto::

    python -m gossip.proto --regenerate    # rewrites gossip/_proto/gossip_pb2.py{,i}
    python -m gossip.proto --check         # exit 1 if the committed code is stale

``tests/test_proto.py`` runs the check. This module imports nothing from the rest
of the package, so it works even while the committed code is stale. It is a dev tool:
it reads and writes the source checkout (an installed wheel carries a copy of the spec,
``gossip/_proto/gossip.proto``, but nothing to regenerate into).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "gossip.proto"
GENERATED = ROOT / "gossip" / "_proto"
GENERATED_FILES = ("gossip_pb2.py", "gossip_pb2.pyi")


class GeneratorMissing(RuntimeError):
    """grpcio-tools or mypy-protobuf is not installed."""


class SourceTreeMissing(RuntimeError):
    """Run from an installed gossip: there is no checkout with ``proto/`` to generate from."""


def _require_source_tree() -> None:
    if not PROTO.is_file():
        raise SourceTreeMissing(
            f"{PROTO} not found: gossip is installed at {ROOT / 'gossip'}, not run from a source checkout; "
            "run this from a clone of the repository (pip install -e '.[dev]')"
        )


def generate(out_dir: Path, proto: Path = PROTO) -> list[Path]:
    """Run protoc (python + mypy stubs) on ``proto`` into ``out_dir``; returns the written files."""
    if importlib.util.find_spec("grpc_tools") is None:
        raise GeneratorMissing("grpcio-tools is not installed: pip install -e '.[dev]'")
    plugin = shutil.which("protoc-gen-mypy") or str(Path(sys.executable).parent / "protoc-gen-mypy")
    if not Path(plugin).exists():
        raise GeneratorMissing("mypy-protobuf (protoc-gen-mypy) is not installed: pip install -e '.[dev]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={out_dir}",
           f"--mypy_out={out_dir}", f"--plugin=protoc-gen-mypy={plugin}", str(proto)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed: {proc.stderr.strip()}")
    return [out_dir / name for name in GENERATED_FILES]


def stale_files() -> list[str]:
    """Committed generated files that differ from a fresh generation (empty: up to date)."""
    _require_source_tree()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.name for p in fresh
                if not (GENERATED / p.name).exists() or not filecmp.cmp(p, GENERATED / p.name, shallow=False)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.proto", description="protobuf code generation")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--regenerate", action="store_true", help="rewrite gossip/_proto from proto/")
    group.add_argument("--check", action="store_true", help="exit 1 if gossip/_proto is stale")
    args = ap.parse_args(argv)
    try:
        if args.regenerate:
            _require_source_tree()
            for path in generate(GENERATED):
                print(f"wrote {path.relative_to(ROOT)}")
            return 0
        stale = stale_files()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if stale:
        print(f"stale: {', '.join(stale)} (run python -m gossip.proto --regenerate)", file=sys.stderr)
        return 1
    print("gossip/_proto is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
