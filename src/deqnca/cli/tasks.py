"""The commands every task gets from the engine: `deqnca train --task NAME` for any registered task (a
plugin's included) and `deqnca eval` of any model kind whose task measures it (`Task.evaluate`).

A task's flags are its `Config`'s fields, known only once the task is registered: the command line is
built after `--plugin` modules run, for the task `--task` names."""
from __future__ import annotations

import sys

from deqnca.core.fileio import strict_json
from deqnca.engine.commandline import (
    add_run_flags,
    build_config,
    finish_training,
    options_from_args,
    setup_device,
    writable_folder,
)


def task_from_argv(argv) -> str | None:
    """The value of `train --task NAME` in argv (None where the line trains no task by name)."""
    argv = list(argv or [])
    if not argv or argv[0] != "train":
        return None
    for i, a in enumerate(argv):
        if a == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--task="):
            return a.split("=", 1)[1]
    return None


def task_class(name: str):
    """The registered task `name` (the built-in ones registered first); a one-line error listing them."""
    from deqnca.core.configs import ConfigError
    from deqnca.engine.task import TASKS
    from deqnca.tasks import load_builtin_tasks

    load_builtin_tasks()
    try:
        return TASKS.get(name)
    except ValueError as e:
        raise ConfigError(f"--task: {e}") from None


def add_task_train(sub, name: str) -> None:
    """`deqnca train --task NAME`: one flag per option of the task's Config, its presets, the run's flags."""
    cls = task_class(name)
    p = sub.add_parser("train", help=f"train the {name!r} task",
                       description=f"Train the {name!r} task ({cls.__name__}); every option of its config is a flag "
                                   "or a --set key.")
    p.add_argument("--task", required=True, help="a registered task (its --plugin first, for your own)")
    names = cls.presets.names() if cls.presets is not None else []
    p.add_argument("--preset", choices=names or None, default=names[0] if len(names) == 1 else None,
                   help=f"the task's preset ({', '.join(names) or 'none: the config defaults'})"
                        + (" (required: the task has several)" if len(names) > 1 else ""))
    add_run_flags(p, cls.Config, f"runs/{name}-<preset>-seed<seed>")
    p.set_defaults(func=cmd_train_task)


def cmd_train_task(args) -> int:
    from deqnca.core.configs import ConfigError
    from deqnca.engine.trainer import fit

    cls = task_class(args.task)
    if args.preset is None and cls.presets is not None and len(cls.presets) > 1:
        raise ConfigError(f"--task {args.task}: choose its --preset ({', '.join(cls.presets.names())})")
    base = cls.presets.build(args.preset) if args.preset else cls.Config()
    device = setup_device(args.device)
    train, _, given = options_from_args(args, cls.Config, base)
    cfg = build_config(cls.Config, train, None)
    out = writable_folder(args.out or f"runs/{args.task}-{args.preset or 'default'}-seed{cfg.seed}")
    result = fit(cls(cfg), out, device=device, resume=args.resume, overwrite=args.overwrite, changed=given,
                 log=lambda s: print(s, file=sys.stderr), progress=not args.json)
    return finish_training(args, out, result, "done: {out}  parameters {parameters}  {global_step} steps")


def evaluate_with_task(path, device: str = "cpu") -> dict:
    """The record of `Task.evaluate` for the checkpoint at `path`: its task, built from the run's recorded
    config, loads its held-out data and measures the checkpoint's model."""
    from deqnca.core.configs import ConfigError
    from deqnca.data.provenance import same_data, short
    from deqnca.engine.checkpoint import CheckpointError
    from deqnca.engine.task import Task
    from deqnca.tasks import load

    model, meta = load(path, device)
    cls = task_class(meta["kind"])
    if cls.evaluate is Task.evaluate:
        raise CheckpointError(f"{path}: {meta['kind']!r} models are measured by their own commands, not `deqnca "
                              f"eval` (see `deqnca {meta['kind']} --help`)")
    task = cls(load_config(cls, meta, path))
    task.device = device
    task.setup()
    recorded, current = meta.get("data"), task.data_record
    if isinstance(recorded, dict) and isinstance(current, dict) and not same_data(recorded, current):
        raise ConfigError(f"{path} was trained on {short(recorded)}; its task now reads {short(current)}, other "
                          "data: evaluate it where its data is")
    task.model = model
    return {"checkpoint": str(path), "kind": meta["kind"], **task.evaluate()}


def load_config(cls, meta: dict, path):
    from deqnca.core.configs import load_dataclass
    from deqnca.engine.checkpoint import CheckpointError

    if not isinstance(meta.get("train_config"), dict):
        raise CheckpointError(f"{path}: no train_config in its JSON; its task cannot rebuild its data to evaluate it")
    return load_dataclass(cls.Config, meta["train_config"], what=f"{cls.name} train config")


def print_task_eval(record: dict, as_json: bool) -> None:
    if as_json:
        print(strict_json(record))
        return
    rest = {k: v for k, v in record.items() if k not in ("checkpoint", "kind")}
    print(f"{record['checkpoint']} ({record['kind']})\n  " + "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rest.items()))


def recorded_kind(path) -> str:
    """The model kind a checkpoint's record names (its JSON only)."""
    from deqnca.engine.checkpoint import checkpoint_kind, read_checkpoint

    return checkpoint_kind(read_checkpoint(path, tensors=False)[1])
