"""Build hook (the metadata lives in pyproject.toml): ship the top-level ``web/`` and ``proto/``.

The dashboard's page (``web/``) and the protocol spec (``proto/gossip.proto``) stay top-level
folders of the repository, outside the ``gossip`` package, so plain package-data cannot reach
them. ``build_py`` copies them into the build as ``gossip/_web/`` and ``gossip/_proto/gossip.proto``,
where an installed gossip finds them with ``importlib.resources``. Editable installs skip the
copy: they run from the checkout and read ``web/`` and ``proto/`` in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {  # source in the repository -> destination inside the built package
    "web": "gossip/_web",
    "proto/gossip.proto": "gossip/_proto/gossip.proto",
}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for src, dst in SHIPPED.items():
            source, target = ROOT / src, Path(self.build_lib) / dst
            if not source.exists():
                raise FileNotFoundError(f"{source} is missing: the wheel would lack it")
            if source.is_dir():
                shutil.rmtree(target, ignore_errors=True)  # a stale build/ must not keep deleted files
                shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


setup(cmdclass={"build_py": BuildPyWithData})
