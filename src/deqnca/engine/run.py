"""A run's state (`Run`) and its folder (`RunFolder`): what a checkpoint saves and resume restores, the
run folder's files (config.json, metrics.jsonl, the checkpoint `last`), and the rules for starting a run
in a folder and for resuming one."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deqnca.core.configs import ConfigError, load_dataclass
from deqnca.core.fileio import fault_point
from deqnca.data.provenance import same_data, short
from deqnca.engine import distributed
from deqnca.engine.checkpoint import (
    CheckpointError,
    atomic_write,
    check_run_record,
    load_optimizer_state,
    load_state,
    read_checkpoint,
    save_checkpoint,
)
from deqnca.engine.meter import Meter
from deqnca.engine.runfiles import RunFiles, locked

# options that may change when a run is resumed: how long it trains; everything else is the run itself
RESUMABLE = ("epochs", "steps", "time_budget", "checkpoint_every", "max_bad_steps", "cuda_graph")
RUN_FILES = ("last.json", "metrics.jsonl", "config.json")


@dataclass
class Run:
    """Where a run stands: everything the engine carries from one step to the next.

    A checkpoint saves the position, the history, the counters and the meter (`record`); resume restores
    them (`restore`). The rest is rebuilt from the restored weights.
    """
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed: float = 0.0                  # seconds of training (evaluation excluded)
    history: list = field(default_factory=list)       # the epochs' records
    counters: dict = field(default_factory=dict)      # skipped and restored steps, and the task's counts
    meter: Meter = field(default_factory=Meter)
    cpu_path: dict = field(default_factory=dict)      # threads, layout and precision the run chose (cpu_path.py)
    # not checkpointed
    good_weights: dict | None = None      # the last weights known good: where a step that broke them goes back
    bad_steps: int = 0                    # consecutive skipped or undone steps
    snapshot_due: bool = False            # take the next healthy weights as the good ones
    updating: bool = False                # a step changed the weights and is not yet counted
    clock: float = field(default_factory=time.time)   # when training time was last counted

    def record(self) -> dict:
        """The parts of a checkpoint's JSON record that hold the run's state."""
        return {"history": self.history, "counters": self.counters, "meter": self.meter.state(),
                "cpu_path": self.cpu_path,
                "task_state": {},     # kept for readers of the earlier layout (tasks' own state lived here)
                "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                             "global_step": self.global_step, "elapsed_s": self.elapsed}}

    def restore(self, meta: dict, steps_per_epoch: int, device) -> None:
        """Continue from checkpoint record `meta` (a record written before the meter existed starts it empty)."""
        progress = meta["progress"]
        self.global_step, self.elapsed = progress["global_step"], progress["elapsed_s"]
        # the position from the step count: a run resumed with more steps per epoch (a longer grow run)
        # continues inside its last epoch
        self.epoch, self.step_in_epoch = divmod(self.global_step, steps_per_epoch)
        self.history, self.counters = meta.get("history", []), {**self.counters, **meta.get("counters", {})}
        self.meter.load_state(meta.get("meter", {}), device)

    def fraction(self, epochs: int, steps_per_epoch: int, time_budget: float) -> float:
        """How far through the run the next step is (0..1): by epochs, or by the time budget if further."""
        done = (self.epoch + self.step_in_epoch / steps_per_epoch) / epochs
        return max(done, self.elapsed / time_budget) if time_budget > 0 else done

    def step_taken(self) -> None:
        """Count the step just taken (its bookkeeping done)."""
        self.global_step += 1
        self.step_in_epoch += 1
        self.updating = False

    def count_time(self, agree=None) -> None:
        """Add the time since the clock was last read to `elapsed` (`agree`: one clock for all processes)."""
        now = time.time()
        self.elapsed, self.clock = self.elapsed + now - self.clock, now
        if agree is not None:
            self.elapsed = agree(self.elapsed)

    def out_of_time(self, time_budget: float) -> bool:
        """Whether the time budget (0: none) is spent."""
        return time_budget > 0 and self.elapsed >= time_budget


def resolve_config(cfg, saved: dict, changed: set | None):
    """The config of a resumed run: the saved one, with only `RESUMABLE` options taken from `cfg`.
    An option in `changed` (given explicitly; None: any that differs) that would alter the run is refused."""
    new = asdict(cfg)
    known = {k: v for k, v in saved.items() if k in new}
    if changed is None:
        changed = {k for k in new if k in known and new[k] != known[k]}
    refused = sorted(k for k in changed if k not in RESUMABLE and k in known and new[k] != known[k])
    if refused:
        detail = ", ".join(f"{k} ({known[k]!r} in the run, {new[k]!r} now)" for k in refused)
        raise ConfigError(f"--resume continues the run as it was started; these options would change it: "
                          f"{detail}. Drop them, or start a new run in another --out")
    return load_dataclass(type(cfg), {**known, **{k: new[k] for k in RESUMABLE if k in new}}, "train config")


def check_same_data(recorded, current, log=print) -> None:
    """A resumed run goes on with the data it was trained on: another dataset (another content hash) is refused
    like any option that would change the run. A run that recorded none (an older deqnca) goes on, said so."""
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        if current and recorded is None:
            log(f"--resume: the run recorded no data (an older deqnca); continuing on {short(current)}")
        return
    if not same_data(recorded, current):
        raise ConfigError(f"--resume continues the run on its own data: it was trained on {short(recorded)}, "
                          f"not {short(current)}. Resume it with its data, or start a new run in another --out")


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> bool:
    """A fresh run needs an empty folder: one that holds a run is refused unless `overwrite` (which deletes
    only the run's files, `RunFiles`). Returns whether there is a checkpoint to resume from (a run killed
    before its first one starts afresh; tensor files without the `last.json` that names them are refused).
    Called with the folder's lock held."""
    tensors = RunFiles(out).tensor_files()
    if resume:
        if (out / "last.json").exists():
            return True
        if tensors:
            raise CheckpointError(f"--resume: {out} holds the checkpoint tensors {', '.join(tensors)} but no "
                                  f"last.json, the record that names them; restore {out / 'last.json'}, or start "
                                  "a new run in another --out (nothing was changed)")
        if not (out / "config.json").exists():
            raise CheckpointError(f"--resume: {out} holds no run; start one there without --resume")
        (out / "metrics.jsonl").unlink(missing_ok=True)      # records of steps no checkpoint kept
        return False
    held = [name for name in RUN_FILES if (out / name).exists()] + tensors
    if held and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume or "
                          "replace it with --overwrite")
    if held:
        RunFiles(out).remove_run()
    return False


def count_parameters(model) -> int:
    """Trained parameters (those that require a gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class RunFolder:
    """The run folder `path`: the main process writes it (the others only read the checkpoint)."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = Path(path), main
        self.files = RunFiles(self.path)

    @contextmanager
    def owned(self):
        """The folder (created) for the life of the run: the main process holds its lock, so a second run
        into it is refused (`FolderBusy`) and the checks of `open` and the run's writes are one run's."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.main:
            yield
            return
        with locked(self.path):
            yield

    def claim(self, run: Run | None) -> None:
        """Every check passed: the run starts writing (main process). Removes what a kill left behind (only
        files deqnca writes), records the run's files in the manifest and, when resuming (`run`), trims
        metrics.jsonl to the checkpoint's steps."""
        if not self.main:
            return
        metrics = self.path / "metrics.jsonl"
        kept = kept_records(metrics, run.global_step) if run is not None else None   # refused: nothing changed
        self.files.start()
        if kept is not None:
            atomic_write(metrics, lambda tmp: Path(tmp).write_text("".join(s + "\n" for s in kept)))

    def open(self, task, resume: bool, overwrite: bool, changed: set | None, world: int, device) -> dict | None:
        """Prepare the folder (refusing to overwrite a run) and, when resuming, read and check the
        checkpoint's record and take the run's config from it. Returns that record, or None (a fresh run)."""
        if self.main:
            resume = prepare_run_folder(self.path, resume, overwrite)
        if world > 1:       # every process learns whether there is a checkpoint to resume from
            resume = distributed.all_ok(resume if self.main else True, device)
        if not resume:
            return None
        last = self.path / "last"
        _, meta = read_checkpoint(last, tensors=False)
        if meta.get("kind") != task.name:
            raise CheckpointError(f"--resume: {last} is a {meta.get('kind')!r} run, not {task.name!r}")
        check_run_record(meta, last)
        task.cfg = resolve_config(task.cfg, meta["train_config"], changed)
        return meta

    def restore(self, task, optimizer, run: Run) -> None:
        """Load the checkpoint into the model, the optimiser, the task's state tensors and `run`."""
        last, model = self.path / "last", task.model
        tensors, meta = read_checkpoint(last)
        check_same_data(meta.get("data"), getattr(task, "data_record", None), task.log)
        load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, last)
        model.to(task.device)
        load_optimizer_state(optimizer, tensors, meta, last)
        steps_per_epoch = task.steps_per_epoch()
        try:
            run.restore(meta, steps_per_epoch, task.device)
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{last}: its running metrics (meter) are malformed ({e}); the checkpoint is "
                                  "corrupt, restore it") from None
        for name, value in task.state_tensors.items():
            saved = tensors.get(f"task.{name}")
            if saved is None or saved.shape != value.shape:
                raise CheckpointError(f"--resume: {last} holds no task.{name} of shape {tuple(value.shape)}; "
                                      "the checkpoint is from another run")
            value.copy_(saved)            # in place: the task holds these tensors
        task.log(f"resuming {self.path} at epoch {run.epoch + 1}, step {run.step_in_epoch} "
                 f"({run.elapsed:.0f}s trained)")

    def write_config(self, task, amp: str, amp_reason: str, world: int, cpu_path: dict | None = None) -> None:
        """config.json: the task, its model's and its training's options, the precision, the CPU path and
        the world size."""
        if not self.main:
            return
        model_config = getattr(getattr(task.model, "config", None), "to_dict", dict)()
        record = {"task": task.name, "model": model_config, "train": asdict(task.cfg), "amp_resolved": amp,
                  "amp_reason": amp_reason, "world_size": world,
                  **({"cpu_path": {k: v for k, v in cpu_path.items() if k != "seconds"}} if cpu_path else {})}
        if getattr(task, "data_record", None):
            record["data"] = task.data_record          # what the run trains on (deqnca.data.provenance)
        atomic_write(self.path / "config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))

    def save(self, task, optimizer, run: Run) -> None:
        """The checkpoint `last`: weights, optimiser, the task's state tensors and the run's state."""
        if not self.main:
            return
        save_checkpoint(self.path / "last", task.model, optimizer, {
            "kind": task.name, "train_config": asdict(task.cfg), "parameters": count_parameters(task.model),
            **({"data": task.data_record} if getattr(task, "data_record", None) else {}),
            **run.record()}, extra_tensors={f"task.{k}": v for k, v in task.state_tensors.items()},
            content_addressed=True, claim=self.files.claim)

    @contextmanager
    def saved_on_interrupt(self, task, optimizer, run: Run):
        """On Ctrl-C or SIGTERM, save a checkpoint (unless a second one came in the middle of an update: then
        the last complete one is kept) and say how to continue."""
        try:
            yield
        except KeyboardInterrupt as e:
            what = str(e) or "interrupted"          # "terminated (SIGTERM)" for `trainer.Terminated`
            if run.updating:
                task.log(f"{what} in the middle of a step: the last checkpoint in {self.path} is kept; "
                         "continue with --resume")
            else:
                self.save(task, optimizer, run)
                task.log(f"{what}: checkpoint saved to {self.path / 'last'}; continue with --resume")
            raise

    def append(self, record: dict) -> None:
        """One record to metrics.jsonl (main process)."""
        if self.main:
            append_record(self.path / "metrics.jsonl", record)


def kept_records(path: Path, global_step: int) -> list[str] | None:
    """The lines of metrics.jsonl that the checkpoint at `global_step` holds: a crash may leave records of later
    steps and a torn last line, both dropped. Any other line that is not a JSON record is an error naming it
    (nothing after it is dropped unseen). None when there is no file."""
    if not path.exists():
        return None
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    filled = [n for n, line in enumerate(lines) if line.strip()]
    keep = []
    for n in filled:
        try:
            rec = json.loads(lines[n])
        except (ValueError, RecursionError):
            rec = None
        step = rec.get("global_step", 0) if isinstance(rec, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            if n == filled[-1]:
                break                       # a torn last line
            raise CheckpointError(f"{path}: line {n + 1} is not a JSON record with a step ({lines[n][:40]!r}), and "
                                  "records follow it; --resume drops only a torn last line: fix or delete that "
                                  "line, then resume again (nothing was changed)")
        if step <= global_step:
            keep.append(lines[n])
    return keep


def append_record(path: Path, rec: dict) -> None:
    """Append `rec` to the JSON-lines file `path`, flushed."""
    fault_point("metrics", path)
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
    except OSError as e:            # a full disk: name the file (a write's error names none)
        if e.errno is None or e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
