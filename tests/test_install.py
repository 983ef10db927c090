"""A non-editable install serves the dashboard: web/ and proto/ ship inside the wheel.

Builds a wheel from a copy of the source (so the repo's build/ is neither used nor left behind),
installs it with ``--no-deps`` into a fresh venv whose dependencies come from this venv's
site-packages (a ``.pth`` file: nothing is downloaded, torch is not reinstalled), and runs
``python -m gossip.dashboard`` from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

import pytest
from ports import free_port_block

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "gossip", "web", "proto")
WEB_FILES = sorted(p.name for p in (ROOT / "web").iterdir() if p.is_file())
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**CLEAN_ENV, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", src, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("gossip-*.whl")
    return wheel


def _venv_with_wheel(tmp: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel; this venv's site-packages supplies the dependencies."""
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    # installed before the .pth exists, so pip sees no other gossip (the dev venv has an editable one)
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    dev_paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # plain path lines:
    (site / "_dev_dependencies.pth").write_text("\n".join(dev_paths) + "\n")  # its .pth files (the editable
    return python  # gossip finder) are not run, so gossip can only come from this venv


def _url_from(stderr: IO[str], timeout_s: float = 60) -> str:
    """The URL from the dashboard's ``dashboard: URL`` line (a thread reads, so a hang cannot block)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout_s
    while not (seen and seen[-1].startswith("dashboard: ")):
        try:
            seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"dashboard did not start: {''.join(seen)[-2000:]}") from None
    return seen[-1].split()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_the_installed_wheel_serves_the_dashboard_from_outside_the_repo(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in WEB_FILES:
            assert f"gossip/_web/{name}" in names, f"web/{name} is not in the wheel"
            assert zf.read(f"gossip/_web/{name}") == (ROOT / "web" / name).read_bytes()
        assert zf.read("gossip/_proto/gossip.proto") == (ROOT / "proto" / "gossip.proto").read_bytes()
        assert not any(n.startswith(("web/", "proto/")) for n in names)  # no top-level folders in site-packages

    python = _venv_with_wheel(tmp_path, wheel)
    venv = python.parent.parent.resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = _run(python, "-c", "import json, gossip, gossip.observe.dashboard as d; "
                 "print(json.dumps([gossip.__file__, str(d.WEB_DIR)]))", cwd=outside)
    module, web = (Path(p).resolve() for p in json.loads(probe.stdout))
    assert module.is_relative_to(venv) and not module.is_relative_to(ROOT), module
    assert web == module.parent / "_web", web

    check = subprocess.run([str(python), "-m", "gossip.proto", "--check"], cwd=outside, capture_output=True,
                           text=True, timeout=60, env=CLEAN_ENV)
    assert check.returncode == 2 and "not run from a source checkout" in check.stderr, check.stderr

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"peers: 2\ndashboard:\n  telemetry_port: {free_port_block(2)}\n")
    proc = subprocess.Popen([str(python), "-m", "gossip.dashboard", "--config", str(cfg), "--port", "0"],
                            cwd=outside, stderr=subprocess.PIPE, text=True, env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        url = _url_from(proc.stderr)
        status, kind, page = _get(url)
        assert status == 200 and kind.startswith("text/html") and page == (ROOT / "web" / "index.html").read_bytes()
        assert b"/static/app.js" in page
        for name in ("app.js", "style.css"):
            status, _, body = _get(url + "static/" + name)
            assert status == 200 and body == (ROOT / "web" / name).read_bytes()
        status, _, snap = _get(url + "api/snapshot")
        assert status == 200 and json.loads(snap)["config"]["peers"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
