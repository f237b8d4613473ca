import os

import pytest
import torch

# `make test` runs the suite on two pytest-xdist workers: each worker, and every process it starts, gets one
# thread, so that two workers do not oversubscribe two cores (OpenMP threads spin while they wait)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
# a thread count set, as a user's OMP_NUM_THREADS is: trainings in tests take the fixed CPU path and do not
# time themselves (engine/cpu_path.py; tests/test_cpu_path.py measures without it)
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small tensors: as fast, and far faster on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_small():
    """First 3000 training and 500 test images of the vendored MNIST."""
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    return x[:3000].clone(), y[:3000].clone(), xt[:500].clone(), yt[:500].clone()


# The fast tier (`make test-fast`, under a minute on 2 cores) leaves out what trains, launches
# subprocesses or drives a browser; `make test` runs everything.
SLOW_FILES = {"test_faults.py", "test_hostile.py", "test_distributed.py", "test_distributed_trainers.py", "test_web.py",
              "test_benchmarks.py", "test_install.py", "test_startup.py", "test_examples.py", "test_docs.py"}
SLOW_TESTS = {
    "test_the_compiled_geodesic_step_reaches_the_same_fixed_point_bit_for_bit",
    "test_an_evaluation_extended_in_parts_is_the_whole_evaluation",
    "test_cli_eval_and_show_with_the_symmetrised_read_out",
    "test_cells_eval_runs_the_attacks_and_the_mutation_of_different_labels",
    "test_a_compiled_rule_evaluates_like_the_eager_one",
    "test_compiled_residuals_equal_eager_ones_and_a_solve_keeps_its_states",
    "test_a_few_training_steps_reduce_the_loss",
    "test_a_model_trained_in_a_plain_loop_evaluates_like_the_engine",
    "test_a_registered_user_rule_trains_through_the_api_and_the_cli",
    "test_a_rule_that_kills_every_pattern_is_undone_and_the_pool_keeps_no_dead_state",
    "test_a_short_phantom_window_over_the_pool_teaches_the_seed_to_grow",
    "test_acceleration_beats_picard_on_slow_contraction",
    "test_additive_conditioning_adds_the_input_after_the_nonlinearity",
    "test_any_input_size_and_label_maps",
    "test_article_pool_resumes_exactly_and_the_cli_evaluates",
    "test_auto_choice_is_never_slower_than_float32_nchw_here",
    "test_bf16_amp_training_learns_like_float32",
    "test_cli_generate_train_eval_show",
    "test_cli_train_resume_show_measure",
    "test_contractive_rule_is_a_contraction_at_any_size",
    "test_demo_quick_writes_report_with_existing_files",
    "test_deq_rule_stays_bounded_for_many_steps_on_a_large_maze",
    "test_eval_shipped_equilibrium_model_reaches_its_fixed_point",
    "test_eval_shipped_essay_model_json",
    "test_eval_under_bf16_autocast_keeps_the_shipped_accuracy",
    "test_every_option_is_reachable_and_wrong_keys_are_usage_errors",
    "test_export_strips_the_optimizer_and_keeps_a_loadable_grow_checkpoint",
    "test_figures_written",
    "test_implicit_gradient_matches_finite_differences",
    "test_implicit_gradient_matches_unrolled_autograd",
    "test_init_from_starts_a_new_stage_from_another_runs_weights",
    "test_interrupt_then_resume_equals_uninterrupted_run",
    "test_non_finite_steps_are_skipped_and_never_saved",
    "test_parallel_generation_matches_serial",
    "test_report",
    "test_rollout_command",
    "test_round_trip_model_optimizer_and_buffers",
    "test_runs_are_never_overwritten_and_resume_keeps_the_run_as_it_was",
    "test_shipped_dt_model_solves_9x9_mazes",
    "test_shipped_lizards_load_and_both_trainers_grow_the_lizard",
    "test_the_window_recipe_sets_the_equilibrium_trainers_options_and_explicit_ones_win",
    "test_tiny_training_beats_chance_per_cell",
    "test_tiny_training_learns_past_threshold",
    "test_tiny_equilibrium_training_solves_most_5x5_mazes",
    "test_tiny_training_run_solves_most_5x5_mazes",
    "test_torchdeq_masking_fix_keeps_broydens_best_iterate_finite",
    "test_train_amp_flag_reaches_the_run_config",
    "test_which_steps_have_a_fixed_shape",
}


# Tests that time themselves run alone, after the others (`make test`'s second pytest): another worker's load
# would make them measure it.
TIMING_TESTS = {"test_help_is_fast", "test_example_runs_quickly", "test_the_page_is_fast_enough",
                "test_auto_choice_is_never_slower_than_float32_nchw_here",
                "test_training_on_the_measured_path_is_never_slower_than_the_fixed_one"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.originalname in TIMING_TESTS:
            item.add_marker(pytest.mark.timing)
            item.add_marker(pytest.mark.slow)           # the fast tier runs on the two workers only
    # The files with slow tests first, and those tests first in their file, so that the two workers do not end
    # with one long training running alone; a file's tests stay together (its module fixtures are set up once).
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in slow_files, item.get_closest_marker("slow") is None))


# ---- commands as real processes, without paying Python's and torch's start-up for each -------------------

# A process that imports torch and deqnca once and forks a child for each command: the child is a real
# process (it holds its own locks, takes signals, dies by SIGKILL) that runs `deqnca.cli.main(argv)` as
# `python -m deqnca.cli` would, in about a second instead of five (importing torch and building the first
# optimiser take ~4 s on a loaded 2-core machine). Nothing in it runs a parallel region before forking.
_ZYGOTE = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)     # imports what every optimiser needs, once
from deqnca.cli import main
import deqnca.engine.trainer

def child(req):
    rc = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        try:
            rc = main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)

for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(req)
        answer = {"pid": pid}
    else:                                   # "poll": the exit code, or None while it runs
        pid, status = os.waitpid(req["pid"], os.WNOHANG)
        answer = {"rc": os.waitstatus_to_exitcode(status) if pid else None}
    print(json.dumps(answer), flush=True)
"""


class Command:
    """A `deqnca` command started by `Launcher.start`: its pid, and its exit code and output once it ends."""

    def __init__(self, launcher, pid, out, err):
        self.launcher, self.pid, self._out, self._err, self.returncode = launcher, pid, out, err, None

    def poll(self):
        if self.returncode is None:
            self.returncode = self.launcher._ask({"op": "poll", "pid": self.pid})["rc"]
        return self.returncode

    def wait(self, timeout: float = 300):
        import time

        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                pytest.fail(f"process {self.pid} still running after {timeout} s")
            time.sleep(0.02)
        return self.returncode

    @property
    def stdout(self) -> str:
        return self._out.read_text()

    @property
    def stderr(self) -> str:
        return self._err.read_text()


class Launcher:
    """Starts `deqnca` command lines as forks of one process that has imported torch and deqnca (the
    deqnca under test: the one this pytest imports)."""

    def __init__(self, folder):
        import subprocess
        import sys
        import threading
        from pathlib import Path

        import deqnca

        self.folder, self._lock, self._count = Path(folder), threading.Lock(), 0
        package = Path(deqnca.__file__).resolve().parents[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)

    def _ask(self, request: dict) -> dict:
        import json

        with self._lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the launcher process ended")
        return json.loads(line)

    def start(self, argv, env: dict | None = None, cwd=None) -> Command:
        """Start `deqnca argv` with environment `env` (default: this process's, OMP_NUM_THREADS=1)."""
        with self._lock:
            self._count += 1
            n = self._count
        out, err = self.folder / f"{n}.out", self.folder / f"{n}.err"
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if env is None else env
        pid = self._ask({"op": "start", "argv": [str(a) for a in argv], "env": env, "cwd": str(cwd or os.getcwd()),
                         "stdout": str(out), "stderr": str(err)})["pid"]
        return Command(self, pid, out, err)

    def run(self, argv, env: dict | None = None, timeout: float = 300) -> Command:
        """`deqnca argv` to its end (`.returncode`, `.stdout`, `.stderr`)."""
        command = self.start(argv, env)
        command.wait(timeout)
        return command

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    """`Launcher`: real `deqnca` processes at a fraction of the start-up cost."""
    forks = Launcher(tmp_path_factory.mktemp("launcher"))
    yield forks
    forks.close()
