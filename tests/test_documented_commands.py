"""Every command shown in README.md and docs/ runs here.

The commands are read from the fenced bash/sh/shell/console blocks of README.md and docs/**/*.md (continuation
lines joined, `# comments` stripped, `a; b` and `a && b` split, `{a,b}` expanded as bash does; a console block's
commands are its `$ ` lines), so a command added to the docs later is found here and must be classified in
COMMANDS, by its exact text, as one of:

  Run     run as written (cheap ones);
  Budget  run with a declared small budget: the flags it sets (added, or replacing the documented value) and the
          ones it drops are in the table; the command and its other flags are the documented ones;
  Long    parse only, for the genuinely long ones (hour-long trainings): every flag and value is accepted by the
          real parser, and a command of the same family (`family`) runs here with a small budget;
  Gpu     `--device cuda`: parse only as written, and the same command runs on the CPU (`--device cpu`) with a
          small budget (under torchrun: the command torchrun launches, in one process;
          tests/test_distributed*.py run several);
  Script  `python scripts/X.py ...`: every flag is in the script's --help and accepted with its value
          (`X.py <documented args> --help` exits 0); run too with a small budget where it has one;
  Other   not a deqnca command (make, pip, git, pytest), with what covers it.

The commands of a page run in the page's order in one temporary folder, so that a run an earlier command writes
is there for the later ones; in this process (`deqnca.cli.main`: torch imported once), except the scripts and
torchrun. `~/` stands for a temporary home, `$DEQNCA_MAZE_CACHE` is a temporary folder, and SETUP lists what a
page's commands expect to find (a plugin file, a data folder, a checkpoint).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

import deqnca

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(deqnca.__file__).resolve().parents[1]          # the deqnca under test (its src/ folder)
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
DEADLINE_S = 120                                                # one command; a hang fails the test

# the small budgets, one per command family
MNIST = "--train-subset 64 --test-subset 16 --epochs 1"
CELLS = "--steps 2 --train-images 32 --eval-images 4"
GROW = "--steps 1 --batch-size 5 --rollout-steps 8 8 --pool-size 16"
MAZE = "--epochs 1 --train-count 16 --val-count 4 --batch-size 8"
LOOP_SPECS = ("dfs,prim,kruskal,wilson,division,dfs+anywhere,dfs+loops=0.05+anywhere,prim+loops=0.1,"
              "kruskal+loops=0.05+anywhere,wilson+loops=0.1,division+loops=0.05+anywhere,dfs+loops=0.1,"
              "percolation+p=0.3,percolation+p=0.5,percolation+p=0.7")      # docs/mazes-loops.md's training mix


# ---- the classes ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Run as written; it ends with exit code `rc` and its output holds each text of `says`."""
    rc: int = 0
    says: tuple = ()


@dataclass(frozen=True)
class Budget:
    """Run with these flags set (added, or in place of the documented values) and those of `drop` left out."""
    flags: str
    drop: tuple = ()
    why: str = ""


@dataclass(frozen=True)
class Long:
    """Parse only (`why`: how long it takes); a command of `family` runs here with a small budget."""
    why: str
    family: str


@dataclass(frozen=True)
class Gpu:
    """Needs a GPU: parse only as written; runs with `--device cpu` and these flags set."""
    flags: str = ""


@dataclass(frozen=True)
class Script:
    """A script of the repository: flags checked against its --help; with `run`, run with those flags set."""
    run: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Other:
    """Not a deqnca command: `why` says what covers it; with `paths`, the repository paths it names exist."""
    why: str
    paths: bool = False


RUNS = (Run, Budget, Gpu)                   # classes whose command (or its variant) runs here
NO_FIGURES_IN_THE_REPOSITORY = "writes into the temporary folder's docs/figures/, not the repository's"
# how long to train is the command line's on --resume (a flag left out is its default): the same budget
RESUME = "the budget of the run it resumes"
INSTALL = "installing: tests/test_install.py installs the deqnca wheel in a fresh venv (torch: this one's) and runs it"

COMMANDS = {
    # ---- README.md -----------------------------------------------------------------------------------------
    "make demo": Other("the README's main job, minutes long: CI runs it; `deqnca demo --quick` runs in "
                       "tests/test_nca.py::test_demo_quick_writes_report_with_existing_files"),
    "make test": Other("CI runs `make test` itself; this test is part of it"),
    "pip install torch --index-url https://download.pytorch.org/whl/cpu": Other(INSTALL),
    "deqnca eval": Budget("--limit 20", why="both shipped models on 20 test images instead of 10,000"),
    "deqnca rollout mnist-equilibrium --out out/roll": Run(says=("prediction after",)),
    "deqnca grow show grow/lizard-equilibrium": Budget("--steps 16"),
    "deqnca maze show maze/dt --size 33": Run(says=("33x33 maze 0",)),
    "deqnca cells figures cells/consensus --out out/cells": Budget("--digits 4 --steps 20 --canvases 1"),
    "deqnca web --out site": Run(says=("wrote site/index.html",)),
    "deqnca train --preset essay --device cuda": Gpu(MNIST),
    # ---- docs/getting-started.md ---------------------------------------------------------------------------
    "pip install torch --index-url https://download.pytorch.org/whl/cu130": Other(INSTALL),
    "git clone https://github.com/deqnca/deqnca": Other("getting the sources: tests/test_install.py installs "
                                                        "from a copy of the checkout"),
    "cd deqnca": Other("getting the sources"),
    "pip install .": Other(INSTALL),
    "pip install build": Other(INSTALL),
    "python -m build": Other(INSTALL),
    "pip install dist/deqnca-*.whl": Other(INSTALL),
    "make docs": Other("the site: tests/test_docs.py builds it (mkdocs build --strict)"),
    # ---- docs/architecture.md ------------------------------------------------------------------------------
    "deqnca train --plugin leaky_rule.py --set rule=leaky_tanh --set rule_kw.leak=0.3 --epochs 1":
        Budget("--train-subset 64 --test-subset 16"),
    "python scripts/trainer_fingerprints.py --compare results/trainer-fingerprints-epyc.json":
        Script(why="eight trainings, minutes on 2 cores, compared with another machine's fingerprints"),
    # ---- docs/cells.md -------------------------------------------------------------------------------------
    "deqnca cells train --model article --device cpu --time-budget 10800 --steps 11000 --lr-decay-at 7500 "
    "--out runs/cells-article-seed0": Budget(CELLS),
    "deqnca cells train --model consensus --device cpu --time-budget 8000 --eval-every 250 "
    "--out runs/cells-consensus-seed0": Budget(CELLS),
    "deqnca cells train --model consensus --device cpu --time-budget 8000 --eval-every 250 "
    "--out runs/cells-consensus-seed0 --resume": Budget(CELLS, why=RESUME),
    "deqnca cells train --model consensus --init-from cells/consensus --set rule.confirm=2 --set rule.reach=2 "
    "--lr 3e-3 --steps 5000 --time-budget 2700 --eval-every 300 --eval-images 64 --device cpu "
    "--out runs/cells-consensus-confirmed": Budget(CELLS),
    "deqnca cells eval cells/consensus --images 1000 --marks 20,80,200,1000 --mutation --solve --compile":
        Budget("--images 2", drop=("--compile",),
               why="compiling costs ~20 s: tests/test_cells.py::test_a_compiled_rule_evaluates_like_the_eager_one"),
    "deqnca cells eval cells/article --images 100 --marks 20,80,200,1000,10000 --canvases 20 --compile":
        Budget("--images 2 --marks 20,80,200 --canvases 1", drop=("--compile",),
               why="10,000 steps take 30 s; compiling ~20 s (tests/test_cells.py compiles)"),
    **{f"deqnca cells eval cells/{m} --images 200 --marks 200 --mutation --attacks --device cpu":
       Budget("--images 2 --attack-digits 2 --attack-horizon 3 --attack-cells 1",
              why="minutes each (400 steps of 200 digits, 150,000 digit-steps of attacks); "
                  "tests/test_cells_attacks.py checks the measurements on hand-made rules")
       for m in ("article", "consensus", "equilibrium", "consensus-confirmed")},
    "python scripts/cells_campaign.py run --model consensus --checkpoint cells/consensus --parts all --shards 2":
        Script(why="hours, and it writes results/cells/; its parts are `deqnca cells eval` (run above)"),
    "python scripts/cells_campaign.py table --models article consensus consensus-confirmed": Script(run=""),
    "python scripts/cells_campaign.py run --model consensus-confirmed --checkpoint cells/consensus-confirmed "
    "--parts full --shards 2":
        Script(why="50 minutes on two cores, and it writes results/cells/; its parts are `deqnca cells eval`"),
    "python scripts/cells_campaign.py run --model consensus-confirmed --checkpoint cells/consensus-confirmed "
    "--parts solved long --long-images 50":
        Script(why="an hour on one thread, and it writes results/cells/; its parts are `deqnca cells eval`"),
    "deqnca cells eval cells/consensus-confirmed --images 2000 --marks 20,80,200 --compile --batch-size 250 "
    "--device cpu --out results/cells/consensus-confirmed-step200-2000.json":
        Budget("--images 2 --out out/confirmed-step200.json", drop=("--compile",),
               why="2,000 digits to 200 steps take ~15 minutes; compiling ~20 s (tests/test_cells.py compiles)"),
    "deqnca cells figures cells/article cells/consensus --out out/cells": Budget("--digits 4 --steps 20 --canvases 1"),
    "deqnca cells figures cells/article cells/consensus --out docs/figures/cells --steps 1000 "
    "--eval-json results/cells/article-long.json results/cells/consensus-long.json":
        Budget("--steps 20 --canvases 1", why=NO_FIGURES_IN_THE_REPOSITORY),
    # ---- docs/grow.md --------------------------------------------------------------------------------------
    "deqnca grow train --trainer bptt --target lizard --variant regenerating --time-budget 240 --device cuda "
    "--out runs/grow-bptt": Gpu(GROW),
    "deqnca grow train --trainer implicit --recipe window --target lizard --variant regenerating --time-budget 240 "
    "--device cuda --out runs/grow-window": Gpu(GROW),
    "deqnca grow show runs/grow-window/last": Budget("--steps 16"),
    "deqnca grow measure runs/grow-bptt/last runs/grow-window/last --out out/grow-measure":
        Budget("--samples 1 --horizon 8"),
    "PYTHONPATH=src python benchmarks/grow_memory.py --device cpu": Script(run="--horizons 8 --batch 1"),
    # ---- docs/guarantees.md (the faults are tested by the tests it names) ----------------------------------
    "python -m pytest tests/test_hostile.py tests/test_inputs.py tests/test_faults.py tests/test_checkpoint.py":
        Other("the suite runs these tests; the files it names exist", paths=True),
    "deqnca train --preset essay --out runs/essay-seed0": Budget(MNIST),
    "deqnca train --preset essay --out runs/essay-seed0 --resume": Budget(MNIST, why=RESUME),
    "deqnca eval big --debug": Run(rc=1, says=("Traceback", "state_channels = 1000000")),
    "DEQNCA_DEBUG=1 deqnca eval big": Run(rc=1, says=("Traceback", "state_channels = 1000000")),
    # ---- docs/howto/bf16-cpu.md ----------------------------------------------------------------------------
    "deqnca train --preset essay --amp bf16 --device cpu --out runs/essay-bf16": Budget(MNIST),
    "deqnca eval mnist-essay --amp bf16 --device cpu": Budget("--limit 20"),
    # ---- docs/howto/own-dataset.md (~/data/fashion-mnist: a small IDX set in the temporary home) -----------
    "deqnca train --preset essay --data-dir ~/data/fashion-mnist --no-verify --out runs/fashion": Budget("--epochs 1"),
    "deqnca eval runs/fashion/last --data-dir ~/data/fashion-mnist --no-verify":
        Run(says=("runs/fashion/last", "idx:fashion-mnist")),
    "deqnca train --preset essay --out runs/fashion --resume": Budget("--epochs 1", why=RESUME),
    "deqnca eval runs/fashion/last": Run(says=("idx:fashion-mnist",)),
    "deqnca info runs/fashion/last": Run(says=("trained on idx:fashion-mnist",)),
    # ---- docs/howto/own-rule.md (leaky_rule.py: the page's rule) -------------------------------------------
    "deqnca train --plugin leaky_rule.py --preset equilibrium --set rule=leaky_tanh --set rule_kw.leak=0.3 "
    "--train-subset 1000 --test-subset 500 --epochs 1 --out runs/leaky-tanh":
        Budget("--train-subset 64 --test-subset 16"),
    "deqnca eval runs/leaky-tanh/last --plugin leaky_rule.py --limit 500": Budget("--limit 16"),
    # ---- docs/howto/several-gpus.md ------------------------------------------------------------------------
    "torchrun --nproc_per_node 4 -m deqnca.cli train --preset essay --device cuda --out runs/essay-ddp": Gpu(MNIST),
    "torchrun --nproc_per_node 4 -m deqnca.cli grow train --trainer implicit --recipe window --device cuda "
    "--batch-size 32": Gpu(GROW),
    "torchrun --nproc_per_node 4 -m deqnca.cli maze train --model dt --device cuda --batch-size 256": Gpu(MAZE),
    "torchrun --nproc_per_node 2 -m deqnca.cli train --preset essay --device cpu": Budget(MNIST),
    # ---- docs/mazes.md -------------------------------------------------------------------------------------
    "deqnca maze generate --split train --sizes 9 --count 50000": Budget("--count 20"),
    "deqnca maze generate --split test": Budget("--count 5", why="5 mazes of each test size instead of 1,000"),
    "deqnca maze train --model dt --width 32 --time-budget 100 --batch-size 128 --lr 2e-3 --out runs/maze-dt":
        Budget(MAZE),
    "deqnca maze train --model deq --width 32 --time-budget 100 --batch-size 128 --lr 2e-3 --out runs/maze-deq":
        Budget(MAZE),
    "deqnca maze eval runs/maze-dt/last runs/maze-deq/last --aa-count 20 --out out/maze-eval":
        Budget("--sizes 9 13 --limit-per-size 2 --aa-count 2"),
    "deqnca maze show runs/maze-deq/last --size 201 --out out/maze-show": Budget("--max-iters 2"),
    "deqnca maze train --model geodesic --width 8 --train-size 13 --train-sizes [5,7,9,11] --train-count 10000 "
    "--batch-size 32 --lr 5e-3 --epochs 25 --time-budget 3600 --device cpu --out runs/maze-geo-dfs":
        Budget("--epochs 1 --train-count 8 --val-count 4 --batch-size 8"),
    "deqnca maze train --model geodesic --width 8 --train-size 13 --train-sizes [5,7,9,11] --train-count 10000 "
    "--batch-size 32 --lr 5e-3 --epochs 25 --time-budget 3600 --device cpu --generator mix --out runs/maze-geo-mix":
        Long("an hour", family="deqnca maze train --model geodesic --train-sizes [5,7,9,11]"),
    "deqnca maze train --model dt --width 32 --train-size 13 --train-sizes [5,7,9,11] --train-count 10000 "
    "--batch-size 32 --lr 2e-3 --epochs 2 --time-budget 3600 --device cpu --out runs/maze-dt-5to13":
        Long("an hour", family="deqnca maze train --model dt --width 32"),
    "deqnca export runs/maze-geo-dfs/last src/deqnca/_data/models/maze/geodesic --machine ... --command ...":
        Run(says=("src/deqnca/_data/models/maze/geodesic",)),
    "python scripts/maze_campaign.py run --name geodesic-mix --checkpoint maze/geodesic-mix --compile --generators "
    "dfs prim kruskal wilson division --sizes 9 19 33 59 --limit 9=1000,19=1000,33=500,59=300":
        Script(why="hours, and it writes results/mazes/; its parts are `deqnca maze eval` (run above)"),
    "python scripts/maze_campaign.py run --name geodesic-mix --checkpoint maze/geodesic-mix --compile --sizes 201 "
    "--limit 201=10 --aa-count 2": Script(why="writes results/mazes/campaign/"),
    "python scripts/maze_campaign.py run --name dt-recall --checkpoint maze/dt-5to13 --generators dfs --sizes 9 19 33 "
    "59 --limit 9=1000,19=300,33=100,59=30": Script(why="hours, and it writes results/mazes/campaign/"),
    "python scripts/maze_campaign.py run --name dt-recall --checkpoint maze/dt-5to13 --generators prim kruskal "
    "wilson division --sizes 9 19 33 59 --limit 9=200,19=100,33=30,59=10":
        Script(why="an hour, and it writes results/mazes/campaign/"),
    "python scripts/maze_campaign.py run --name geodesic-mix-d4 --checkpoint maze/geodesic-mix --compile "
    "--readout-symmetry d4 --no-curve --generators dfs prim kruskal wilson division --sizes 9 19 33 59 "
    "--limit 9=1000,19=1000,33=500,59=300": Script(why="hours, and it writes results/mazes/campaign/"),
    "python scripts/maze_campaign.py table": Script(run=""),
    # docs/mazes-loops.md
    "deqnca maze show maze/geodesic-mix --size 19 --generator dfs+loops=0.05+anywhere --index 3 --out "
    "docs/figures/mazes/loops": Budget("--out pictures --max-iters 4", why=NO_FIGURES_IN_THE_REPOSITORY),
    "deqnca maze show maze/trace --size 19 --generator dfs+loops=0.05+anywhere --index 3 --out "
    "docs/figures/mazes/loops": Budget("--out pictures --max-iters 4", why=NO_FIGURES_IN_THE_REPOSITORY),
    "python scripts/maze_campaign.py run --name trace --checkpoint maze/trace --sizes 9 19 59 --limit "
    "9=200,19=200,59=100 --aa-count 10 --no-curve --generators dfs dfs+anywhere prim+anywhere "
    "dfs+loops=0.01+anywhere dfs+loops=0.05+anywhere dfs+loops=0.1+anywhere prim+loops=0.01+anywhere "
    "prim+loops=0.05+anywhere prim+loops=0.1+anywhere kruskal+loops=0.01 kruskal+loops=0.05 kruskal+loops=0.1 "
    "wilson+loops=0.01 wilson+loops=0.05 wilson+loops=0.1 division+loops=0.01 division+loops=0.05 "
    "division+loops=0.1 percolation+p=0.1 percolation+p=0.3 percolation+p=0.5":
        Script(why="tens of minutes, and it writes results/mazes/campaign/; its parts are `deqnca maze eval` runs"),
    "python scripts/maze_campaign.py run --name trace --checkpoint maze/trace --sizes 201 --limit 201=20 "
    "--aa-count 0 --no-curve --generators dfs dfs+anywhere prim+anywhere dfs+loops=0.01+anywhere "
    "dfs+loops=0.05+anywhere dfs+loops=0.1+anywhere prim+loops=0.01+anywhere prim+loops=0.05+anywhere "
    "prim+loops=0.1+anywhere kruskal+loops=0.01 kruskal+loops=0.05 kruskal+loops=0.1 wilson+loops=0.01 "
    "wilson+loops=0.05 wilson+loops=0.1 division+loops=0.01 division+loops=0.05 division+loops=0.1 "
    "percolation+p=0.1 percolation+p=0.3 percolation+p=0.5":
        Script(why="tens of minutes, and it writes results/mazes/campaign/; its parts are `deqnca maze eval` runs"),
    "python scripts/maze_campaign.py run --name geodesic-mix-loops --checkpoint maze/geodesic-mix --sizes 9 19 59"
    " --limit 9=200,19=200,59=50 --aa-count 0 --no-curve --generators dfs+anywhere prim+anywhere "
    "dfs+loops=0.01+anywhere dfs+loops=0.05+anywhere dfs+loops=0.1+anywhere prim+loops=0.01+anywhere "
    "prim+loops=0.05+anywhere prim+loops=0.1+anywhere kruskal+loops=0.01 kruskal+loops=0.05 kruskal+loops=0.1 "
    "wilson+loops=0.01 wilson+loops=0.05 wilson+loops=0.1 division+loops=0.01 division+loops=0.05 "
    "division+loops=0.1 percolation+p=0.1 percolation+p=0.3 percolation+p=0.5":
        Script(why="tens of minutes, and it writes results/mazes/campaign/; its parts are `deqnca maze eval` runs"),
    "python scripts/maze_campaign.py loops trace geodesic-mix-loops dt-loops":
        Script(run=""),
    "python scripts/maze_campaign.py run --name dt-loops --checkpoint maze/dt-loops --generators dfs+anywhere "
    "dfs+loops=0.05+anywhere prim+loops=0.1+anywhere kruskal+loops=0.05 wilson+loops=0.1 division+loops=0.01 "
    "percolation+p=0.3 percolation+p=0.5 --sizes 9 19 --limit 9=100,19=50 --aa-count 10 --no-curve":
        Script(why="tens of minutes, and it writes results/mazes/campaign/; its parts are `deqnca maze eval` runs"),
    "python scripts/maze_campaign.py run --name dt-loops --checkpoint maze/dt-loops --generators "
    "dfs+loops=0.05+anywhere percolation+p=0.5 --sizes 59 --limit 59=5 --aa-count 2 --no-curve":
        Script(why="tens of minutes, and it writes results/mazes/campaign/; its parts are `deqnca maze eval` runs"),
    "deqnca maze generate --sizes 9 59 --count 100 --generator dfs+loops=0.05+anywhere": Budget("--count 3"),
    "python -m deqnca.tasks.maze.loop_statistics --sizes 9 19 59 201 --count 100 --specs dfs dfs+loops=0.05+anywhere "
    "percolation+p=0.3": Other("minutes; loop_statistics.statistics_table and spec_statistics run in "
                               "tests/test_maze_loops.py"),
    "deqnca maze train --model trace --train-size 13 --train-sizes [5,7,9,11] --train-count 10000 --batch-size 32 "
    "--lr 5e-3 --epochs 25 --time-budget 3000 --device cpu --out runs/maze-trace --generator " + LOOP_SPECS:
        Budget("--epochs 1 --train-count 8 --val-count 4 --batch-size 8"),
    "deqnca maze train --model dt --width 32 --train-size 13 --train-sizes [5,7,9,11] --train-count 10000 "
    "--batch-size 32 --lr 2e-3 --epochs 2 --time-budget 3000 --device cpu --out runs/maze-dt-loops --generator "
    + LOOP_SPECS: Long("50 minutes", family="deqnca maze train --model dt --width 32"),
    "deqnca export runs/maze-trace/last src/deqnca/_data/models/maze/trace --machine ... --command ...":
        Run(says=("src/deqnca/_data/models/maze/trace",)),
    "PYTHONPATH=src python benchmarks/maze_801.py --size 801 --mazes 3 --model maze/trace --generators dfs "
    "dfs+loops=0.05+anywhere kruskal kruskal+loops=0.05 --json results/mazes/loops/trace_801.json --pictures "
    "docs/figures/mazes/loops": Script(run="--size 9 --mazes 1 --generators dfs+loops=0.05 --json bench.json "
                                           "--pictures pictures"),
    "python scripts/maze_campaign.py figures --out docs/figures/mazes/campaign":
        Script(run="--curves-only", why="47 pictures of failures take 2.5 min; " + NO_FIGURES_IN_THE_REPOSITORY),
    "deqnca maze train --model dt --width 32 --batch-size 128 --lr 2e-3 --time-budget 240 --device cuda "
    "--out runs/maze-dt": Gpu(MAZE),
    "deqnca maze train --model deq --width 32 --batch-size 128 --lr 2e-3 --time-budget 240 --device cuda "
    "--out runs/maze-deq": Gpu(MAZE),
    "deqnca maze train --model deq --width 32 --batch-size 128 --lr 2e-3 --time-budget 240 --residual-weight 1 "
    "--device cuda --out runs/maze-deq-res": Gpu(MAZE),
    "deqnca maze eval runs/maze-dt/last runs/maze-deq/last runs/maze-deq-res/last --aa-count 20 --limit-per-size "
    "9=1000,13=1000,19=1000,33=300,59=100,101=30,201=10 --device cuda --out out/maze-eval":
        Gpu("--sizes 9 13 --limit-per-size 2 --aa-count 2"),
    "deqnca maze show runs/maze-dt/last --size 201 --device cuda": Gpu("--max-iters 2"),
    # ---- docs/mnist.md -------------------------------------------------------------------------------------
    "deqnca eval mnist-essay --json": Budget("--limit 20"),
    "deqnca eval mnist-essay --max-iter 64": Budget("--limit 20"),
    "deqnca train --preset essay --seed 0 --device cuda --out runs/essay-s0": Gpu(MNIST),
    "deqnca train --preset essay --seed 0 --device cuda --out runs/essay-s0 --resume": Gpu(MNIST),
    "deqnca train --preset equilibrium --device cuda": Gpu(MNIST),
    "deqnca train --preset equilibrium --set rule_kw.gamma=0.95 --out runs/gamma-0.95": Budget(MNIST),
    "deqnca train --preset equilibrium-strided --seed 0 --device cpu --out runs/strided-seed0": Budget(MNIST),
    "python scripts/mnist_equilibrium_check.py runs/strided-seed0/last runs/strided-seed1/last "
    "runs/strided-seed2/last --json results/mnist/strided_check.json":
        Script(why="needs the three runs; the next command runs the same script"),
    "python scripts/mnist_equilibrium_check.py mnist-equilibrium --limit 500": Script(run="--limit 20"),
    # ---- docs/web.md ---------------------------------------------------------------------------------------
    "deqnca web": Run(says=("out/web/index.html",)),
    "deqnca web --cell-model runs/cell/last": Run(says=("out/web/index.html",)),
    "deqnca demo --out out/demo": Budget("--quick", why="the report from smaller samples"),
    "mkdocs build -d /tmp/site": Other("the site: tests/test_docs.py builds it (mkdocs build --strict)"),
    "PYTHONPATH=src python scripts/web_screenshots.py --out docs/images --site out/web --report out/demo "
    "--docs /tmp/site": Script(why="screenshots in a browser of a wheel install; its flags are checked"),
    "PYTHONPATH=src python -m pytest -q -s tests/test_web.py -k 59_maze":
        Other("the suite runs this test (the live page's acceptance check); the file it names exists", paths=True),
}


# ---- what a page's commands expect to find --------------------------------------------------------------

def python_block(page: str, holding: str) -> str:
    """The fenced python block of `page` that holds `holding`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    found = [b for b in blocks if holding in b]
    assert len(found) == 1, f"{page}: expected one python block with {holding!r}"
    return found[0]


def write_idx(folder: Path, n_train: int = 64, n_test: int = 16) -> None:
    """A small data set in the MNIST layout (28x28 images, labels 0..9) in `folder`, for `--data-dir`."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{split}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28)
                                                             + images.tobytes())
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n)
                                                             + labels.tobytes())


def oversized_checkpoint(dest: Path) -> None:
    """`big`: the shipped essay model with a million state channels in its record (docs/guarantees.md)."""
    models = PACKAGE / "deqnca" / "_data" / "models"
    record = json.loads((models / "mnist-essay.json").read_text())
    shutil.copy(models / record["weights_file"], dest / "big.safetensors")
    record["weights_file"] = "big.safetensors"
    record["model_config"]["state_channels"] = 10**6
    (dest / "big.json").write_text(json.dumps(record))


def home(work: Path) -> Path:
    """The home folder `~` stands for in the commands run in `work`: a temporary one, beside it."""
    return work.parent / "home"


SETUP = {
    "docs/architecture.md": [("leaky_rule.py: the page's rule, tests/plugins/leaky_rule.py",
                              lambda w: shutil.copy(ROOT / "tests" / "plugins" / "leaky_rule.py", w))],
    "docs/howto/own-rule.md": [('leaky_rule.py: "the class above", the page\'s rule',
                                lambda w: (w / "leaky_rule.py").write_text(
                                    python_block("docs/howto/own-rule.md", 'register_rule("leaky_tanh")')))],
    "docs/howto/own-dataset.md": [("~/data/fashion-mnist: 64 + 16 images in the MNIST layout",
                                   lambda w: write_idx(home(w) / "data" / "fashion-mnist"))],
    "docs/guarantees.md": [("big: a checkpoint whose record asks for a million channels", oversized_checkpoint)],
    "docs/cells.md": [("results/: the repository's", lambda w: shutil.copytree(ROOT / "results", w / "results"))],
    "docs/mazes.md": [("results/: the repository's", lambda w: shutil.copytree(ROOT / "results", w / "results"))],
    # the page trains its per-cell model with an inline command that writes runs/essay-seed0
    "docs/web.md": [("runs/cell: the page's per-cell training (--set readout=cell), small, into runs/cell",
                     ["deqnca", "train", "--preset", "essay", "--set", "readout=cell", *MNIST.split(), "--device",
                      "cpu", "--out", "runs/cell"])],
}


def trained_as_an_equilibrium(work: Path) -> None:
    """docs/howto/own-rule.md: the run in runs/leaky-tanh is the user's rule, solved to its fixed point (the
    equilibrium preset's solver and implicit gradient) and reaching it."""
    config = json.loads((work / "runs" / "leaky-tanh" / "config.json").read_text())["model"]
    assert (config["rule"], config["rule_kw"], config["solver"], config["gradient"]) == (
        "leaky_tanh", {"leak": 0.3}, "fixed_point", "implicit"), config
    last = [json.loads(line) for line in (work / "runs" / "leaky-tanh" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["test_nstep"] < config["solver_kw"]["max_iter"] and last["test_frac_below_1e-3"] == 1.0, last


# pages whose blocks are alternatives, each run in a fresh folder (the others share one: a later block may use an
# earlier block's run, e.g. own-dataset.md's --resume)
ALTERNATIVE_BLOCKS = {"docs/mazes.md": "the GPU block repeats the CPU one's trainings into the same runs/"}

def trained_by_two_processes(work: Path) -> None:
    """docs/howto/several-gpus.md: `torchrun --nproc_per_node 2 ... --device cpu` trained one run in two processes."""
    assert json.loads((work / "runs" / "essay-seed0" / "config.json").read_text())["world_size"] == 2


# what the commands of a page must have done, beyond their exit codes
AFTER = {"docs/howto/own-rule.md": [trained_as_an_equilibrium],
         "docs/howto/several-gpus.md": [trained_by_two_processes]}


# ---- reading the docs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Documented:
    """One command of a page: its block's and its own line, the environment it sets (`A=b cmd`), its words."""
    page: str
    block: int
    line: int
    env: tuple
    argv: tuple

    @property
    def key(self) -> str:
        return " ".join([*(f"{k}={v}" for k, v in self.env), *self.argv])

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.key}"


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
BRACES = re.compile(r"^([^{}]*)\{([^{}:\"' ]+(?:,[^{}:\"' ]+)+)\}([^{}]*)$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_blocks(page: str):
    """(line number of its first line, lines, is console) for each fenced shell block of `page`."""
    lines = (ROOT / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, language = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and not lines[j].strip().strip(fence[0])):
            j += 1
        if language in SHELLS:
            yield i + 2, lines[i + 1:j], language == "console"
        i = j + 1


def command_lines(first: int, body: list, console: bool):
    """(line number, text) of each command line of a block: continuation lines joined."""
    text, start = "", None
    for n, line in enumerate(body, first):
        if console and not text:
            if not line.startswith("$ "):
                continue                                    # a console block's output
            line = line[2:]
        start = start or n
        if line.rstrip().endswith("\\"):
            text += line.rstrip()[:-1] + " "
            continue
        yield start, text + line
        text, start = "", None


def split_line(text: str) -> list[list[str]]:
    """The commands of one shell line: its words (quotes removed, `# comment` dropped, `{a,b}` expanded), split
    at `;` and `&&`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands = [[]]
    for token in lexer:
        if token in (";", "&&"):
            commands.append([])
        elif set(token) <= set(";&|"):
            raise ValueError(f"{token!r} in {text!r}: write one command per line, without pipes or jobs")
        else:
            m = BRACES.match(token)
            commands[-1] += [m[1] + alt + m[3] for alt in m[2].split(",")] if m else [token]
    return [c for c in commands if c]


def documented_commands(pages=PAGES) -> list[Documented]:
    found = []
    for page in pages:
        for first, body, console in shell_blocks(page):
            for line, text in command_lines(first, body, console):
                for words in split_line(text):
                    n = 0
                    while n < len(words) and ASSIGNMENT.match(words[n]):
                        n += 1
                    env = tuple(tuple(w.split("=", 1)) for w in words[:n])
                    found.append(Documented(page, first, line, env, tuple(words[n:])))
    return found


# ---- variants ---------------------------------------------------------------------------------------------

def _span(argv: list, flag: str) -> tuple[int, int]:
    """Where `flag` and its values (the words up to the next flag) are in argv."""
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return i, j


def with_flags(argv, flags: str = "", drop=()) -> list[str]:
    """argv with each `--flag [values]` of `flags` in place of the documented one (added where absent) and the
    flags of `drop` left out, each with its values."""
    argv = list(argv)
    for flag in drop:
        i, j = _span(argv, flag)
        del argv[i:j]
    words = shlex.split(flags)
    starts = [i for i, w in enumerate(words) if w.startswith("--")] + [len(words)]
    for a, b in zip(starts, starts[1:]):
        if words[a] in argv:
            i, j = _span(argv, words[a])
            argv[i:j] = words[a:b]
        else:
            argv += words[a:b]
    return argv


def variant(cmd: Documented) -> list[str]:
    """The command line this test runs for `cmd`."""
    kind = COMMANDS[cmd.key]
    argv = list(cmd.argv)
    if isinstance(kind, Gpu):
        argv = with_flags(deqnca_words(argv), "--device cpu " + kind.flags)        # one process, on the CPU
        return ["deqnca", *argv]
    if isinstance(kind, Budget):
        return with_flags(argv, kind.flags, kind.drop)
    if isinstance(kind, Script) and kind.run is not None:
        return with_flags(argv, kind.run)
    return argv


def deqnca_words(argv) -> list[str]:
    """The deqnca arguments of a command line: after `deqnca`, or after `torchrun ... -m deqnca.cli`."""
    argv = list(argv)
    if argv[0] == "deqnca":
        return argv[1:]
    if argv[0] == "torchrun":
        return argv[argv.index("deqnca.cli") + 1:]
    raise AssertionError(f"not a deqnca command: {' '.join(argv)}")


def is_deqnca(argv) -> bool:
    return argv[0] == "deqnca" or (argv[0] == "torchrun" and "deqnca.cli" in argv)


def in_family(argv, family: str) -> bool:
    """`argv` is a command of `family`: it starts with the family's command and has each of its flags' values."""
    words = family.split()
    n = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    if list(argv[:n]) != words[:n]:
        return False
    starts = [i for i in range(n, len(words)) if words[i].startswith("--")] + [len(words)]
    for a, b in zip(starts, starts[1:]):
        if words[a] not in argv:
            return False
        i = list(argv).index(words[a])
        if list(argv[i + 1:i + 1 + b - a - 1]) != words[a + 1:b]:
            return False
    return True


def parse(words, what) -> None:
    """`deqnca <words>` through the real parser: every flag and value accepted (the names a `--plugin` registers
    unchecked: it does not run here; `--debug`, which `deqnca.cli.main` takes anywhere, left out as it does)."""
    from contextlib import nullcontext

    from deqnca.cli import build_parser
    from deqnca.core import registry

    words = [w for w in words if w != "--debug"]
    try:
        with registry.names_unchecked() if "--plugin" in words else nullcontext():
            build_parser(words).parse_args(words)
    except SystemExit as e:
        pytest.fail(f"{what}: the parser refuses deqnca {' '.join(words)} (exit code {e.code})")


def script_path(argv) -> Path:
    """The repository script a `python X.py ...` line runs."""
    return ROOT / next(w for w in argv[1:] if w.endswith(".py"))


def script_args(argv) -> list[str]:
    """The arguments a `python X.py ...` line gives its script."""
    return list(argv[[w.endswith(".py") for w in argv].index(True) + 1:])


def environment(extra=()) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **dict(extra)}
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE), os.environ.get("PYTHONPATH", "")])   # the deqnca under test
    return env


def script_help(cmd: Documented) -> None:
    """Each flag of a script's command line is in its --help, and its values are accepted (`... --help`)."""
    script = script_path(cmd.argv)
    args = script_args(cmd.argv)
    subcommand = [args[0]] if args and not args[0].startswith("-") else []
    shown = subprocess.run([sys.executable, str(script), *subcommand, "--help"], capture_output=True, text=True,
                           env=environment(), cwd=ROOT, timeout=60)
    assert shown.returncode == 0, f"{cmd}: --help failed: {shown.stderr[-2000:]}"
    unknown = [w for w in args if w.startswith("--")
               and not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", shown.stdout)]
    assert not unknown, f"{cmd}: {script.name} {' '.join(subcommand)} has no {unknown} (see its --help)"
    checked = subprocess.run([sys.executable, str(script), *args, "--help"], capture_output=True, text=True,
                             env=environment(), cwd=ROOT, timeout=60)
    assert checked.returncode == 0, f"{cmd}: its arguments are refused: {checked.stderr[-2000:]}"


# ---- the fast checks: everything found is classified, parses, and names what exists --------------------------

def test_every_documented_command_is_classified():
    commands = documented_commands()
    assert len(commands) > 50
    missing = [str(c) for c in commands if c.key not in COMMANDS]
    assert not missing, (
        "a command in the docs that tests/test_documented_commands.py does not know; add its exact text to COMMANDS "
        "as Run() (runs as written), Budget('--flags') (runs with a small budget), Long(why, family) (parse only, "
        "a command of its family runs), Gpu('--flags') (--device cuda), Script() or Other(why):\n"
        + "\n".join(missing))
    documented = {c.key for c in commands}
    stale = [k for k in COMMANDS if k not in documented]
    assert not stale, f"no longer in the docs, remove them from COMMANDS: {stale}"
    for cmd in commands:
        kind = COMMANDS[cmd.key]
        script = cmd.argv[0] == "python" and cmd.argv[1].endswith(".py")
        assert is_deqnca(cmd.argv) == isinstance(kind, (Run, Budget, Long, Gpu)), f"{cmd}: {kind} is for deqnca"
        assert script == isinstance(kind, Script), f"{cmd}: Script() is for `python X.py` lines"
        on_gpu = "cuda" in cmd.argv[cmd.argv.index("--device") + 1] if "--device" in cmd.argv else False
        assert on_gpu == isinstance(kind, Gpu), f"{cmd}: Gpu() is for the commands of --device cuda, and they need it"
        assert not isinstance(kind, Budget) or variant(cmd) != list(cmd.argv), f"{cmd}: no budget, use Run()"


def test_every_documented_deqnca_command_and_its_variant_parse():
    commands = documented_commands()
    running = [variant(c) for c in commands if isinstance(COMMANDS.get(c.key), RUNS)]
    for cmd in commands:
        kind = COMMANDS.get(cmd.key)
        if not is_deqnca(cmd.argv) or kind is None:
            continue
        parse(deqnca_words(cmd.argv), cmd)                    # as written: every flag and value accepted
        if isinstance(kind, (Budget, Gpu)):
            parse(deqnca_words(variant(cmd)), f"{cmd} (its variant)")
        if isinstance(kind, Long):
            assert in_family(cmd.argv, kind.family), f"{cmd} is not of its family {kind.family!r}"
            assert any(in_family(r, kind.family) for r in running), f"{cmd}: no command of {kind.family!r} runs"


def test_every_documented_script_takes_its_arguments():
    scripts = [c for c in documented_commands() if isinstance(COMMANDS.get(c.key), Script)]
    assert scripts
    for cmd in scripts:
        script_help(cmd)


def test_every_other_command_says_what_covers_it():
    for cmd in documented_commands():
        kind = COMMANDS.get(cmd.key)
        if isinstance(kind, Other) and kind.paths:
            named = [w for w in cmd.argv if "/" in w]
            assert named and all((ROOT / w).exists() for w in named), f"{cmd}: {named} not in the repository"


# ---- running them ------------------------------------------------------------------------------------------

class Hung(BaseException):
    """A command ran past its deadline (nothing in the program catches it)."""


def run_in_process(argv, capsys) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `deqnca <argv>` in this process; an exception that reaches here (a
    --debug run) is its traceback and exit code 1, as `python -m deqnca.cli` would show."""
    from deqnca.cli import main

    def hung(*_):
        raise Hung(f"deqnca {' '.join(argv)} still running after {DEADLINE_S} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(DEADLINE_S)
    shown = ""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Hung as e:
        pytest.fail(str(e))
    except Exception:
        rc, shown = 1, traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    return rc, out.out + out.err + shown


def run_process(argv, env, cwd) -> tuple[int, str]:
    """(exit code, stdout + stderr) of a script or of torchrun, with the deqnca under test."""
    if argv[0] == "torchrun":                      # on a free port: another run may hold torchrun's 29500
        argv = [sys.executable, "-m", "torch.distributed.run", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", *argv[1:]]
    else:
        argv = [sys.executable, str(script_path(argv)), *script_args(argv)]
    r = subprocess.run(argv, capture_output=True, text=True, env=environment(env), cwd=cwd, timeout=DEADLINE_S)
    return r.returncode, r.stdout + r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(page: str, work: Path, capsys) -> None:
    """What the commands of `page` expect to find in their folder (SETUP)."""
    for what, make in SETUP.get(page, []):
        if callable(make):
            make(work)
        else:
            rc, shown = run_in_process(make[1:], capsys)
            assert rc == 0, f"{page}: setting up {what}: {shown[-3000:]}"


@pytest.fixture
def builtin_registries():
    """The registries (rules, tasks, presets, ...) with only deqnca's own entries while a page runs: a page's
    plugin registers its names as a user's would (another test's plugin of the same name would clash); all
    entries as they were afterwards."""
    from deqnca.core.registry import Registry

    tables = [v for name, module in list(sys.modules.items()) if name == "deqnca" or name.startswith("deqnca.")
              for v in vars(module).values() if isinstance(v, Registry)]
    saved = [(r, dict(r._entries)) for r in tables]
    for r in tables:
        for name, obj in list(r._entries.items()):
            module = getattr(obj, "__module__", "") or ""
            if not (module == "deqnca" or module.startswith("deqnca.")):
                del r._entries[name]
    yield
    for r, entries in saved:
        r._entries.clear()
        r._entries.update(entries)


@pytest.fixture
def one_thread_commands(monkeypatch):
    """Commands on one thread (OMP_NUM_THREADS=1 also skips eval's thread measurement), a temporary home and
    maze cache, none of the user's deqnca variables."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("DEQNCA_PLUGINS", "DEQNCA_DATA", "DEQNCA_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def runs_here(kind) -> bool:
    return isinstance(kind, RUNS) or (isinstance(kind, Script) and kind.run is not None)


PAGES_THAT_RUN = sorted({c.page for c in documented_commands() if runs_here(COMMANDS.get(c.key))})


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_THAT_RUN)
def test_the_commands_of_a_page_run(page, tmp_path, monkeypatch, capsys, builtin_registries, one_thread_commands):
    monkeypatch.setenv("DEQNCA_MAZE_CACHE", str(tmp_path / "mazes"))
    folders, timings = {}, []
    try:
        for cmd in documented_commands([page]):
            kind = COMMANDS[cmd.key]
            if not runs_here(kind):
                continue
            block = cmd.block if page in ALTERNATIVE_BLOCKS else 0
            if block not in folders:
                folders[block] = work = tmp_path / f"work-{block}"
                work.mkdir()
                monkeypatch.chdir(work)
                prepare(page, work, capsys)
            argv = [str(home(work)) + w[1:] if w.startswith("~/") else w for w in variant(cmd)]   # as bash does
            t = time.perf_counter()
            if argv[0] == "deqnca":
                with monkeypatch.context() as m:
                    for k, v in cmd.env:
                        m.setenv(k, v)
                    rc, shown = run_in_process(argv[1:], capsys)
            else:
                rc, shown = run_process(argv, cmd.env, work)
            timings.append((time.perf_counter() - t, " ".join(argv)))
            what = f"{cmd}\nran: {' '.join(argv)}\n"
            expected = kind.rc if isinstance(kind, Run) else 0
            assert rc == expected, f"{what}exit code {rc}, expected {expected}:\n{shown[-3000:]}"
            for says in kind.says if isinstance(kind, Run) else ():
                assert says in shown, f"{what}its output does not say {says!r}:\n{shown[-3000:]}"
        for check in AFTER.get(page, []):
            check(work)
    finally:
        with capsys.disabled():
            print("".join(f"\n  {s:5.1f} s  {line}" for s, line in timings))
