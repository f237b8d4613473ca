"""Training's CPU path (engine/cpu_path.py): chosen by timing the run's own step, restored state after the
timing, recorded and kept on resume, and never slower than the fixed all-cores float32 path."""
import json
import os
import subprocess
import sys

import pytest
import torch

from deqnca.engine import cpu_path
from deqnca.engine.task import Batch, Task
from deqnca.engine.trainer import TrainConfig


class _Sleeper(Task):
    """A step that takes, on the engine's clock, the seconds the test gives per thread count (the clock is
    the test's: the machine's load does not enter); a model with running statistics."""

    name = "sleeper"
    Config = TrainConfig

    def __init__(self, seconds_at, clock):
        super().__init__(TrainConfig(epochs=1))
        self.seconds_at, self.clock = seconds_at, clock
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        self.device = "cpu"

    def batch(self, epoch, index, global_step):
        return Batch(torch.randn(8, 4, generator=torch.Generator().manual_seed(global_step)), 8, 8, index)

    def loss(self, batch):
        self.clock["now"] += self.seconds_at[torch.get_num_threads()]
        return self.model(batch.data).square().mean() + torch.rand(()) * 0, None


@pytest.fixture
def two_cores(monkeypatch):
    """Two cores, all in use; the thread count is only recorded and the clock is the test's, so that the
    steps' given times alone decide."""
    from deqnca.engine import hardware

    info = hardware.cpu_info()
    monkeypatch.setattr(hardware, "cpu_info", lambda *a: {**info, "usable_cores": 2})
    threads, clock = {"n": 2}, {"now": 0.0}
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.update(n=n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads["n"])
    monkeypatch.setattr(cpu_path, "perf_counter", lambda: clock["now"])
    return clock


def test_the_choice_takes_the_faster_path_and_leaves_the_run_as_it_was(two_cores):
    task = _Sleeper({1: 0.002, 2: 0.03}, two_cores)           # two threads 15x slower: a loaded machine
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    path = cpu_path.choose(task, "off", lambda: task.batch(0, 0, 0))
    assert path["threads"] == 1 and path["amp"] == "off", path
    assert "as fast as the fixed path (2 threads" in path["reason"]
    assert torch.get_num_threads() == 2                 # chosen, not yet applied
    assert path["measured"]["1 thread, the task's layout, float32"] == pytest.approx(0.002)
    for k, v in task.model.state_dict().items():        # the timed steps moved BatchNorm's statistics: undone
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in task.model.parameters())


def test_a_path_only_as_fast_as_the_fixed_one_is_not_taken(two_cores):
    task = _Sleeper({1: 0.01, 2: 0.0099}, two_cores)        # 1% apart: noise
    path = cpu_path.choose(task, "off", lambda: task.batch(0, 0, 0))
    assert path["threads"] == 2, path                   # the fixed path: all cores


def test_bf16_is_a_candidate_only_with_bfloat16_units(two_cores, monkeypatch):
    from deqnca.engine import hardware

    task = _Sleeper({1: 0.0, 2: 0.0}, two_cores)
    assert {p[2] for p in cpu_path._candidates(task, "auto")} == (
        {"off", "bf16"} if hardware.has_bf16_units(hardware.cpu_info()) else {"off"})
    monkeypatch.setattr(hardware, "has_bf16_units", lambda info: False)
    assert {p[2] for p in cpu_path._candidates(task, "auto")} == {"off"}
    assert {p[2] for p in cpu_path._candidates(task, "bf16")} == {"bf16"}     # set explicitly: kept


class _ChunkedSleeper(_Sleeper):
    """A task whose rollout can run in chunks (`chunk_candidates`), faster by the test's clock."""

    chunk_candidates = (16,)
    rows_per_chunk = None

    def loss(self, batch):
        self.clock["now"] += 0.01 if self.rows_per_chunk == 16 else 0.02
        return self.model(batch.data).square().mean(), None


def test_a_faster_rollout_in_chunks_is_chosen_applied_and_undone_after_the_timing(two_cores):
    task = _ChunkedSleeper({}, two_cores)
    path = cpu_path.choose(task, "off", lambda: task.batch(0, 0, 0))
    assert path["rows_per_chunk"] == 16 and "rollout in chunks of 16" in path["reason"], path
    assert task.rows_per_chunk is None                  # chosen, not yet applied
    cpu_path.apply(task, path)
    assert task.rows_per_chunk == 16
    cpu_path.apply(task, cpu_path.fixed_path(task, "off", "test"))     # a path without the key: left alone
    assert task.rows_per_chunk == 16


class _SolvingSleeper(_Sleeper):
    """A step that measures residuals at every iteration of its solve (5 per step), faster by the test's clock
    with them compiled; `residuals_per_step` 1: a step (a rollout) that measures them once."""

    def __init__(self, seconds_at, clock, residuals_per_step=5):
        super().__init__(seconds_at, clock)
        self.residuals_per_step = residuals_per_step

    def loss(self, batch):
        from deqnca.core import residuals as residuals_module
        from deqnca.core import solvers

        for _ in range(self.residuals_per_step):
            solvers.residuals(batch.data, batch.data)     # grad on: eager, only counted
        self.clock["now"] += 0.01 if residuals_module._COMPILED.enabled else 0.02
        return self.model(batch.data).square().mean(), None


def test_a_faster_compiled_stopping_test_is_chosen_applied_and_undone_after_the_timing(two_cores):
    """Offered for a step with several stopping tests in a run long enough to repay the compile."""
    from deqnca.core import residuals as residuals_module
    from deqnca.core import solvers

    path = cpu_path.choose(_SolvingSleeper({}, two_cores), "off", lambda: _Sleeper({}, two_cores).batch(0, 0, 0))
    assert path["compiled_residuals"] and "compiled stopping test" in path["reason"], path
    assert not residuals_module._COMPILED.enabled                # chosen, not yet applied
    try:
        cpu_path.apply(_Sleeper({}, two_cores), path)
        assert residuals_module._COMPILED.enabled
    finally:
        solvers.compile_residuals(False)
    once = cpu_path.choose(_SolvingSleeper({}, two_cores, residuals_per_step=1), "off",
                           lambda: _Sleeper({}, two_cores).batch(0, 0, 0))
    assert not once["compiled_residuals"] and not any("compiled" in k for k in once["measured"]), once
    for short in ({"steps_left": 1000}, {"time_budget": 60.0}):      # 20 s or 60 s of training: no compile repaid
        path = cpu_path.choose(_SolvingSleeper({}, two_cores), "off", lambda: _Sleeper({}, two_cores).batch(0, 0, 0),
                               **short)
        assert not any("compiled" in k for k in path["measured"]), (short, path)


def _mnist(out, data, resume=False, **kw):
    from deqnca.tasks.mnist.task import MnistConfig, train

    tiny = dict(rule="residual_tanh", rule_kw={"state_init_scale": 0.1}, solver="rollout",
                solver_kw={"max_iter": 4}, gradient="bptt", gradient_kw={}, input_channels=8, state_channels=16,
                hidden=32)
    cfg = MnistConfig(**{"epochs": 1, "batch_size": 32, "seed": 0, **kw})
    return train(tiny, cfg, out, data, resume=resume, log=lambda s: None)


def test_a_cpu_run_records_its_measured_path_and_a_resumed_run_keeps_it(tmp_path, mnist_small, monkeypatch):
    x, y, xt, yt = mnist_small
    data = (x[:128], y[:128], xt[:32], yt[:32])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _mnist(tmp_path / "run", data)
    first = json.loads((tmp_path / "run" / "config.json").read_text())["cpu_path"]
    assert first["reason"].startswith("measured on this run's step") and len(first["measured"]) >= 2, first
    assert first["layout"] in ("on", "off")            # MNIST's channels_last "auto": measured too
    torch.set_num_threads(3 - first["threads"] if first["threads"] in (1, 2) else 1)
    _mnist(tmp_path / "run", data, resume=True, epochs=2)
    kept = json.loads((tmp_path / "run" / "config.json").read_text())
    assert kept["cpu_path"]["reason"].startswith("kept from the run's start: measured"), kept["cpu_path"]
    assert kept["cpu_path"]["threads"] == first["threads"] == torch.get_num_threads()
    assert kept["cpu_path"]["layout"] == first["layout"]
    assert kept["cpu_path"]["rows_per_chunk"] == first["rows_per_chunk"] in (None, 16)   # a rollout: measured


def test_a_fixed_thread_count_is_respected_and_said(tmp_path, mnist_small):
    x, y, xt, yt = mnist_small
    _mnist(tmp_path / "run", (x[:64], y[:64], xt[:16], yt[:16]))
    path = json.loads((tmp_path / "run" / "config.json").read_text())["cpu_path"]
    assert path["reason"].startswith("fixed:") and "OMP_NUM_THREADS is set" in path["reason"], path
    assert path["measured"] == {}


_BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: there is no thread count to choose")
def test_training_on_the_measured_path_is_never_slower_than_the_fixed_one(tmp_path, mnist_small, monkeypatch):
    """The essay preset, 8 steps of 64 on the measured path and on the fixed one (all cores, float32),
    interleaved, quiet (twice each: there the two paths are close) and with a busy process on one core (once
    each: there the measured path is the clearly faster one); training time only (the choice is not timed).
    The margin, 20%, is above the spread of such repeats on a shared 2-core machine."""
    from deqnca.tasks.mnist.config import preset
    from deqnca.tasks.mnist.task import train

    x, y, xt, yt = mnist_small
    data = (x[:512], y[:512], xt[:64], yt[:64])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    seconds = {}
    try:
        for load in ("quiet", "loaded"):
            busy = subprocess.Popen([sys.executable, "-c", _BUSY]) if load == "loaded" else None
            try:
                for k, path in enumerate(("fixed", "auto") * (2 if load == "quiet" else 1)):
                    torch.set_num_threads(os.cpu_count())
                    cfg = preset("essay", epochs=1, cpu_path=path, amp="off", eval_batch_size=64)
                    r = train(cfg.model, cfg, tmp_path / f"{load}-{path}-{k}", data, log=lambda s: None)
                    seconds.setdefault((load, path), []).append(r["elapsed_s"])
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    finally:
        torch.set_num_threads(before)
    for load in ("quiet", "loaded"):
        fixed, auto = min(seconds[(load, "fixed")]), min(seconds[(load, "auto")])
        assert auto <= 1.2 * fixed, (load, seconds)


_FAULTS = """
import resource, sys, torch
from deqnca.engine.hardware import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def step():                       # a BPTT step's shape: many state-sized tensors kept, then all freed
    kept = [torch.ones(64, 32, 28, 28) for _ in range(24)]
    del kept
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_keeps_freed_memory_and_the_next_step_takes_no_page_faults_for_it():
    """Without it, every step faults in again many of the 38k pages of the states the last one freed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: float(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env,
                                         check=True).stdout) for mode in ("default", "retain")}
    assert faults["default"] > 5_000 and faults["retain"] < faults["default"] / 3, faults
