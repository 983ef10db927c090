"""The committed generated code matches proto/gossip.proto and the pinned generator."""

from __future__ import annotations

import re
import typing
from importlib import metadata
from pathlib import Path

import pytest

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.protocol import generate as proto

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def pin(package: str) -> str:
    match = re.search(rf'"{re.escape(package)}==([^"]+)"', PYPROJECT)
    assert match, f"{package} must be pinned with == in pyproject.toml"
    return match.group(1)


def test_generator_is_the_pinned_one():
    for package in ("grpcio-tools", "mypy-protobuf"):
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{package} not installed (pip install -e '.[dev]')")
        assert installed == pin(package), f"{package} {installed} installed, pyproject pins {pin(package)}"


def test_generated_code_is_up_to_date():
    try:
        stale = proto.stale_files()
    except proto.GeneratorMissing as exc:
        pytest.skip(str(exc))
    assert stale == [], f"{stale} differ from proto/gossip.proto: run python -m gossip.proto --regenerate"


def test_runtime_floor_covers_the_generated_code():
    header = (ROOT / "gossip/_proto/gossip_pb2.py").read_text()
    generated = tuple(int(x) for x in re.search(r"Protobuf Python Version: ([\d.]+)", header).group(1).split("."))
    floor = tuple(int(x) for x in re.search(r'"protobuf>=([\d.]+)"', PYPROJECT).group(1).split("."))
    assert floor >= generated, f"pyproject needs protobuf>={'.'.join(map(str, generated))}"


def test_every_field_and_enum_value_is_commented():
    text = (ROOT / "proto/gossip.proto").read_text()
    declarations = [line for line in text.splitlines() if re.match(r"^\s*[\w. ]+=\s*\d+;", line)]
    assert len(declarations) > 50
    missing = [line.strip() for line in declarations if "//" not in line]
    assert not missing, f"uncommented: {missing}"
    assert not (ROOT / "proto/__init__.py").exists()  # the spec folder is not a package


def test_config_names_map_to_enum_values():
    hints = typing.get_type_hints(CodecConfig)
    for field, enum, prefix in (("select", pb.Selection, "SELECTION_"), ("values", pb.ValueCodec, "VALUE_CODEC_"),
                                ("index", pb.IndexEncoding, "INDEX_ENCODING_")):
        for name in typing.get_args(hints[field]):
            if name != "auto":
                assert enum.Value(prefix + name.upper()) > 0


def test_regenerate_writes_both_files(tmp_path):
    try:
        written = proto.generate(tmp_path)
    except proto.GeneratorMissing as exc:
        pytest.skip(str(exc))
    assert [p.name for p in written] == ["gossip_pb2.py", "gossip_pb2.pyi"] and all(p.exists() for p in written)
    assert "class GradUpdate" in (tmp_path / "gossip_pb2.pyi").read_text()


def test_check_outside_a_source_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(proto, "PROTO", tmp_path / "proto" / "gossip.proto")  # as in site-packages
    monkeypatch.setattr(proto, "GENERATED", tmp_path / "gossip" / "_proto")
    assert proto.main(["--check"]) == 2
    assert proto.main(["--regenerate"]) == 2
    err = capsys.readouterr().err
    assert err.count("not run from a source checkout") == 2 and "Traceback" not in err
    assert not (tmp_path / "gossip").exists()  # nothing written
