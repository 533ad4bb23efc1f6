"""Start-up pays only for what a command uses: `sftdata build` on JSONL with a cached tokenizer, and the
inspection commands, never import the heavy libraries only some inputs or tokenizers need."""

import os
import re
import subprocess
import sys

import pytest

from .conftest import FIXTURES, REPO, fixture_tokenizer

# datasets/polars: Parquet and datasets-folder inputs; transformers: loading a tokenizer the cache lacks;
# torch: training; ray: the Ray executor; fsspec (with asyncio and ssl): paths that are URLs
HEAVY = ("datasets", "polars", "transformers", "torch", "ray", "fsspec", "asyncio", "ssl")


def packages_imported(python_args: list[str], env: dict) -> set[str]:
    """The top-level packages `python PYTHON_ARGS` imports, from its -X importtime lines."""
    done = subprocess.run([sys.executable, "-X", "importtime", *python_args], capture_output=True, text=True,
                          env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", done.stderr, flags=re.MULTILINE)
    return {name.split(".")[0] for name in names}


def imported(args: list[str], env: dict) -> set[str]:
    """The top-level packages `sftdata ARGS` imports."""
    packages = packages_imported(["-m", "sftdata", *args], env)
    assert "sftdata" in packages, "importtime lines were not read"
    return packages


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A build of a JSONL file whose tokenizer is cached, and the environment it ran in."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path_factory.mktemp("startup") / "out"
    args = ["build", str(FIXTURES / "data" / "messages.jsonl"), "--tokenizer", fixture_tokenizer("chatml-bpe"),
            "--out", str(out), "--overwrite", "--quiet"]
    subprocess.run([sys.executable, "-m", "sftdata", *args], check=True, capture_output=True, env=env, cwd=REPO)
    return args, out, env


def test_build_on_jsonl_with_a_cached_tokenizer_imports_none_of_the_heavy_libraries(built):
    args, _, env = built
    assert not imported(args, env) & set(HEAVY)


@pytest.mark.parametrize("command", [["--help"], ["view", "{out}", "--row", "0"], ["stats", "{out}"]])
def test_help_and_inspection_import_none_of_the_heavy_libraries(built, command):
    _, out, env = built
    assert not imported([part.format(out=out) for part in command], env) & set(HEAVY)


def test_the_check_sees_a_heavy_import(built):
    """The same reading catches a heavy library once something imports it (here: the Parquet reader's)."""
    _, _, env = built
    assert "polars" in packages_imported(["-c", "import sftdata.cli, polars"], env)
