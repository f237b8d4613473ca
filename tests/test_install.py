"""Acceptance: deqnca installs the way the README's Install section says, and works installed.

The section's two blocks run as written, each in a fresh virtual environment outside the repository, which
sees this environment's packages behind its own (PyTorch included: nothing is downloaded):

- the clone block (`pip install .`), then the README's "from any folder" block from an empty folder;
- the wheel block (`python -m build`, then `pip install dist/deqnca-*.whl`): its sdist and wheel are the
  release's, so `twine check --strict` must pass on both and their metadata must be complete.

pip runs offline (PIP_NO_INDEX=1) and builds with this environment's setuptools (PIP_NO_BUILD_ISOLATION=0).
A README command that cannot run here as written (no network, no GPU, minutes of CPU) is in INSTEAD (what runs
in its place) or QUICKER (flags appended to it); every key of both must be a README command, so that neither
can go stale, and every other command runs exactly as written.
"""
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPOSITORY = "https://github.com/deqnca/deqnca"
# a README command -> what runs instead, and why
INSTEAD = {
    # there is no network here: a copy of this checkout is the clone
    f"git clone {REPOSITORY} && cd deqnca": "cd {clone}",
    # build's isolated environment would download setuptools: this environment's builds the release
    "pip install build && python -m build": "pip install build && python -m build --no-isolation",
}
# a README command -> flags appended to it, so that it takes seconds on a CPU (the last of a repeated flag wins)
QUICKER = {
    "deqnca eval": "--limit 200 --device cpu",
    "deqnca rollout mnist-equilibrium --out out/roll": "--steps 8 --device cpu",
    "deqnca grow show grow/lizard-equilibrium": "--steps 12 --device cpu",
    "deqnca maze show maze/dt --size 33": "--size 9 --max-iters 30 --device cpu",
    "deqnca cells figures cells/consensus --out out/cells": "--digits 4 --steps 10 --canvases 0 --device cpu",
    "deqnca train --preset essay --device cuda": "--device cpu --epochs 1 --train-subset 200 --test-subset 100",
}


def readme_install_blocks(text: str) -> tuple[list[list[str]], list[str]]:
    """(the install blocks, the "from any folder" block) of the README's Install section: the commands of each
    fenced bash block, comments dropped."""
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    install, anywhere = [], None
    for before, body in re.findall(r"(.*?)```bash\n(.*?)```", section, re.DOTALL):
        commands = [line.split(" #")[0].strip() for line in body.splitlines()]
        commands = [c for c in commands if c and not c.startswith("#")]
        if before.strip().endswith("from any folder:"):
            anywhere = commands
        else:
            install.append(commands)
    assert install and anywhere, "the README's Install section: install blocks, then 'Then, from any folder:'"
    return install, anywhere


def _run(argv, cwd, env, timeout=300):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(argv, str), executable="/bin/bash" if isinstance(argv, str) else None)
    shown = argv if isinstance(argv, str) else " ".join(map(str, argv))
    assert r.returncode == 0, f"{shown}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _fresh_venv(where: Path, tmp: Path) -> dict:
    """A new venv at `where` with pip, seeing this environment's packages behind its own; the environment
    (variables) that activates it and keeps pip offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(
        ("DEQNCA_", "PIP_"))}
    _run([sys.executable, "-m", "venv", "--system-site-packages", where], tmp, env)
    python = where / "bin" / "python"
    # Python 3.11's ensurepip adds an old setuptools (65), which would shadow this environment's (>= 77)
    _run([python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], tmp, env)
    # a venv made from a venv does not see the outer one's packages through --system-site-packages alone
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    (Path(purelib.stdout.strip()) / "outer-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env.update(PATH=f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(where),
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               DEQNCA_MAZE_CACHE=str(tmp / "maze-cache"), OMP_NUM_THREADS="1")
    return env


def _script(commands, clone: Path) -> str:
    lines = [INSTEAD.get(c, c).format(clone=clone) for c in commands]
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def blocks():
    return readme_install_blocks(README.read_text())


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """What `git clone` would give pip (the project files; not the tests, results or docs)."""
    where = tmp_path_factory.mktemp("clone") / "deqnca"
    where.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, where / name)
    shutil.copytree(ROOT / "src", where / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return where


def test_the_mappings_name_readme_commands_and_the_clone_is_the_repository(blocks):
    install, anywhere = blocks
    commands = [c for block in install for c in block] + anywhere
    assert not [c for c in INSTEAD if c not in commands], "INSTEAD names a command the README no longer has"
    assert not [c for c in QUICKER if c not in anywhere], "QUICKER names a command the README no longer has"
    urls = dict(re.findall(r'^(\w+) = "(https://[^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE))
    assert urls["Source"] == urls["Homepage"] == REPOSITORY and commands[0].startswith(f"git clone {REPOSITORY} ")
    citation = (ROOT / "CITATION.cff").read_text()
    assert f"repository-code: {REPOSITORY}" in citation


@pytest.fixture(scope="module")
def from_clone(blocks, clone, tmp_path_factory):
    """The README's first install block (the clone: `pip install .`) run in a fresh venv: (env, empty folder)."""
    tmp = tmp_path_factory.mktemp("from-clone")
    env = _fresh_venv(tmp / "venv", tmp)
    _run(_script(blocks[0][0], clone), tmp, env, timeout=600)
    work = tmp / "empty"
    work.mkdir()
    where = _run(["python", "-c", "import deqnca; print(deqnca.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(tmp / "venv"), f"deqnca imported from {where}, not from the install"
    return env, work


def test_the_readmes_commands_run_from_any_folder(blocks, from_clone, record_property):
    env, work = from_clone
    seconds = {}
    for command in blocks[1]:
        t = time.perf_counter()
        r = _run(f"{command} {QUICKER.get(command, '')}".strip(), work, env)
        seconds[command] = round(time.perf_counter() - t, 1)
        if command.startswith("deqnca eval"):
            assert "test accuracy" in r.stdout and "mnist-equilibrium" in r.stdout, r.stdout
    record_property("seconds", seconds)
    made = {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()}
    assert "site/index.html" in made and any(p.startswith("out/roll/") and p.endswith(".gif") for p in made)
    assert any(p.startswith("out/cells/") for p in made) and any(p.endswith(".png") for p in made)


@pytest.fixture(scope="module")
def from_wheel(blocks, clone, tmp_path_factory):
    """The README's second install block (build the wheel in the clone, install it) in another fresh venv:
    (env, empty folder, the dist folder)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("build is not installed (it comes with the test extra: pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("from-wheel")
    env = _fresh_venv(tmp / "venv", tmp)
    shutil.rmtree(clone / "dist", ignore_errors=True)
    _run(_script(blocks[0][1], clone), clone, env, timeout=600)
    work = tmp / "empty"
    work.mkdir()
    where = _run(["python", "-c", "import deqnca; print(deqnca.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(tmp / "venv"), f"deqnca imported from {where}, not from the wheel"
    return env, work, clone / "dist"


def test_the_installed_wheel_runs_from_an_empty_folder(from_wheel):
    env, work, _ = from_wheel
    r = _run(["deqnca", "info", "grow/lizard-bptt", "--json"], work, env)
    assert json.loads(r.stdout)["parameters"] == 8320
    assert not list(work.iterdir()), "the commands wrote into the folder they ran in"


def test_the_release_passes_twine_check_and_its_metadata_is_complete(from_wheel):
    _, _, dist = from_wheel
    pytest.importorskip("twine", reason="twine comes with the test extra (pip install -e '.[test]')")
    sdist, wheel = sorted(dist.glob("deqnca-*.tar.gz")), sorted(dist.glob("deqnca-*.whl"))
    assert len(sdist) == len(wheel) == 1, sorted(p.name for p in dist.iterdir())
    r = _run([sys.executable, "-m", "twine", "check", "--strict", *sdist, *wheel], dist, os.environ)
    assert r.stdout.count("PASSED") == 2, r.stdout
    with zipfile.ZipFile(wheel[0]) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    head, _, description = metadata.partition("\n\n")
    fields = [line.split(": ", 1) for line in head.splitlines() if ": " in line]
    values = {}
    for key, value in fields:
        values.setdefault(key, []).append(value)
    assert values["License-Expression"] == ["MIT"] and values["License-File"] == ["LICENSE"]
    urls = dict(v.split(", ", 1) for v in values["Project-URL"])
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(urls)
    assert all(u.startswith(REPOSITORY) for u in urls.values()), urls
    classifiers = values["Classifier"]
    for version in ("3.10", "3.11", "3.12"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    assert values["Description-Content-Type"] == ["text/markdown"] and "## Install" in description
    assert values["Requires-Python"] and values["Author"] and values["Keywords"]
    # the trained models and MNIST travel in both
    assert any(n.endswith("_data/models/mnist-equilibrium.safetensors") for n in names)
    assert any(n.endswith(".gz") and "_data/mnist/" in n for n in names)
    r = _run(["tar", "tzf", sdist[0]], dist, os.environ)
    assert "_data/models/maze/geodesic.safetensors" in r.stdout and "/LICENSE" in r.stdout
