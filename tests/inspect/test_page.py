"""The page's script and style are package data: inlined into every page, and shipped in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from sftdata.inspect.page import page

from ..conftest import REPO

STATIC = REPO / "sftdata" / "inspect" / "static"


def test_every_page_inlines_the_script_and_the_style():
    text = page("t", [], [], {"kind": "report", "summary": [], "docs": []})
    for name in ("report.js", "report.css"):
        assert (STATIC / name).read_text(encoding="utf-8") in text


def test_the_wheel_carries_the_script_and_the_style(tmp_path):
    pytest.importorskip("setuptools", reason="building a wheel without network needs setuptools installed")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("sftdata", "sfttrain"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("sftdata-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in ("report.js", "report.css"):
            assert z.read(f"sftdata/inspect/static/{name}") == (STATIC / name).read_bytes()
