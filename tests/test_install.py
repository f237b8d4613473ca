"""Acceptance: the wheel works installed. Build it, install it into a fresh venv outside the repository
(reusing this environment's torch), and from an empty folder evaluate a shipped MNIST model, grow a
shipped lizard, replay a rollout and solve a maze: the models and MNIST come from the wheel itself."""
import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, cwd, env, timeout=300):
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, argv))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's bin folder, an empty working folder, the environment to run in)."""
    tmp = tmp_path_factory.mktemp("install")
    # build from a copy, so that the build leaves nothing in the checkout
    src = tmp / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DEQNCA_")}
    env["DEQNCA_MAZE_CACHE"] = str(tmp / "maze-cache")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src],
         tmp, env)
    wheel = next((tmp / "dist").glob("deqnca-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    # this environment's packages (torch, ...) behind the venv's own: a venv made from a venv does not see
    # them through --system-site-packages alone
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                          env).stdout.strip())
    (venv_site / "outer-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp, env)
    work = tmp / "empty"
    work.mkdir()
    where = _run([python, "-c", "import deqnca; print(deqnca.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"deqnca imported from {where}, not from the wheel"
    return venv / "bin", work, env


def test_the_installed_wheel_evaluates_and_grows_from_an_empty_folder(installed, record_property):
    bin_, work, env = installed
    t = time.perf_counter()
    r = _run([bin_ / "deqnca", "eval", "mnist-essay", "--limit", "200", "--device", "cpu", "--json"], work, env)
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["n"] == 200 and row["accuracy"] >= 0.95, row
    _run([bin_ / "deqnca", "grow", "show", "grow/lizard-equilibrium", "--steps", "12", "--device", "cpu",
          "--out", "lizard"], work, env)
    assert {"growth.gif", "regeneration.gif", "frames.png"} <= {f.name for f in (work / "lizard").iterdir()}
    _run([bin_ / "deqnca", "rollout", "--steps", "6", "--device", "cpu", "--out", "rollout"], work, env)
    assert any(f.suffix == ".gif" for f in (work / "rollout").iterdir())
    _run([bin_ / "deqnca", "maze", "show", "maze/dt", "--size", "9", "--max-iters", "30", "--device", "cpu",
          "--out", "maze"], work, env)
    assert any(f.suffix == ".png" for f in (work / "maze").iterdir())
    r = _run([bin_ / "deqnca", "info", "grow/lizard-bptt"], work, env)
    assert "parameters" in r.stdout
    r = _run([bin_ / "deqnca", "cells", "eval", "cells/consensus", "--images", "4", "--marks", "5", "--device",
              "cpu", "--json"], work, env)
    assert json.loads(r.stdout)["rows"][0]["digits"] == 4
    record_property("seconds", round(time.perf_counter() - t, 1))
    leftovers = {p.name for p in work.iterdir()} - {"lizard", "rollout", "maze"}
    assert not leftovers, f"the commands wrote outside their --out folders: {leftovers}"
