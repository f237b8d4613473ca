"""What every command shares: device set-up, plugins, and training options from flags, --set and --config."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from deqnca.core.configs import (
    ConfigError,
    add_dataclass_flags,
    field_names,
    load_dataclass,
    number_type,
    parse_set_pairs,
)
from deqnca.core.fileio import InputError, read_bytes_bounded, strict_json

RUN_FLAGS = ("out", "resume", "overwrite", "set", "config", "json", "device", "plugin")
MAX_STEPS = 100_000          # rollout / replay steps and solver iterations a command accepts
MAX_SEED = 2**63 - 1

# checked argparse types: a bad value is a one-line usage error (exit 2) that says the range
positive_int = number_type(int, 1, name="positive_int")
nonneg_int = number_type(int, 0, name="nonneg_int")
nonneg_float = number_type(float, 0.0, name="nonneg_float")
steps_int = number_type(int, 1, MAX_STEPS, name="steps")
seed_int = number_type(int, 0, MAX_SEED, name="seed")


def writable_folder(path, flag: str = "--out") -> Path:
    """`path`, checked before any work to be a folder this process can write into (or one it can create):
    a one-line error (exit 1) that says what to do when a file is in the way or the folder is read-only."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OSError(f"{flag} {path}: {probe} is a file, not a folder; choose another {flag} or move the file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f"{flag} {path}: {probe} is not writable; choose another {flag} or fix its permissions")
    return path


def setup_device(arg: str, measure_threads: bool = False, verbose: bool = False) -> str:
    """The device for `--device` with threads set for it. With `measure_threads` (evaluation), a CPU run
    takes the thread count a ~1 s measurement of the rule step finds fastest: on a shared machine one
    thread can be several times faster than two (docs/speed.md, "Which CPU path, measured")."""
    from deqnca.engine.devices import pick_device, set_threads

    device = pick_device(arg)
    set_threads(device)
    if measure_threads and device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        from deqnca.engine.hardware import choose_cpu_path

        choice = choose_cpu_path("cpu", allow_bf16=False)
        torch.set_num_threads(choice["threads"])
        if verbose:
            print(f"cpu path: {choice['threads']} thread(s) ({choice['reason']})", file=sys.stderr)
    return device


def load_plugins(specs) -> None:
    """Import user modules (files or dotted names) so that what they register exists before parsing. A plugin
    is Python code: it runs with the user's permissions (docs/howto/own-rule.md says so)."""
    for spec in specs or []:
        path = Path(spec)
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"--plugin {spec}: no such file")
            name = f"deqnca_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as e:      # the plugin's own error, named in one line (--debug: its traceback)
                sys.modules.pop(name, None)
                raise ConfigError(f"--plugin {spec}: it failed to load ({_plugin_error(e)})") from e
        else:
            try:
                importlib.import_module(spec)
            except ImportError as e:
                raise ConfigError(f"--plugin {spec}: cannot import it ({e})") from None
            except Exception as e:
                raise ConfigError(f"--plugin {spec}: it failed to load ({_plugin_error(e)})") from e


def _plugin_error(e: Exception) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg}, line {e.lineno}"
    return f"{type(e).__name__}: {e}"


def plugin_specs(argv) -> list[str]:
    """`--plugin X` values in argv (read before the parser is built), plus $DEQNCA_PLUGINS (comma-separated)."""
    specs = [s for s in os.environ.get("DEQNCA_PLUGINS", "").split(",") if s]
    for i, a in enumerate(argv):
        if a == "--plugin" and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif a.startswith("--plugin="):
            specs.append(a.split("=", 1)[1])
    return specs


MAX_CONFIG_BYTES = 1 << 20      # a --config file (a run's config.json: a few KB)


def read_config_file(path) -> dict:
    """The JSON of a `--config` file: a regular file (not a FIFO or a device, which would never end) of at
    most MAX_CONFIG_BYTES, checked before reading; anything else is a one-line usage error."""
    try:
        data = json.loads(read_bytes_bounded(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except InputError as e:
        raise ConfigError(f"--config {e}") from None
    except (OSError, ValueError, RecursionError) as e:       # unreadable, not UTF-8, not JSON
        raise ConfigError(f"--config {path}: not a readable JSON file "
                          f"({getattr(e, 'strerror', None) or e or type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object with 'train' and/or 'model'")
    return data


def add_run_flags(p, config_cls, default_out: str) -> None:
    """The flags of a training command: one per option of `config_cls`, and the run's own."""
    add_dataclass_flags(p, config_cls)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--out", help=f"run folder (default {default_out})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any training or model option, e.g. --set schedule=cosine --set solver_kw.max_iter=30 "
                        "(repeatable)")
    p.add_argument("--config", metavar="JSON", help="options from a file: {\"model\": {...}, \"train\": {...}} "
                   "(e.g. a run's config.json); flags and --set win")
    p.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE",
                   help="import a module first (e.g. one that registers your own rule or task)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def options_from_args(args, config_cls, base, model_cls=None):
    """(train options, model overrides, explicitly given names) from a preset's config `base` (a `config_cls`
    instance, or a dict of its options), --config, flags and --set.

    A --set key is looked up in the training options first, then in the model's; an unknown key is a
    usage error that lists both."""
    train, model = (dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base)), {}
    given: set = set()
    if getattr(args, "config", None):
        data = read_config_file(args.config)
        unknown = set(data) - {"train", "model", "task", "world_size", "amp_resolved", "amp_reason", "data"}
        if unknown:
            raise ConfigError(f"--config {args.config}: unknown sections {sorted(unknown)}; use 'train' and 'model'")
        for section in ("train", "model"):
            if not isinstance(data.get(section) or {}, dict):
                raise ConfigError(f"--config {args.config}: {section!r} must be a JSON object of settings, "
                                  f"not {type(data[section]).__name__}")
        train.update({k: v for k, v in (data.get("train") or {}).items() if k != "model"})
        model.update(data.get("model") or {})
        given |= set(data.get("train") or {})
    fields = field_names(config_cls)
    flags = {k: v for k, v in vars(args).items() if k in fields and k not in RUN_FLAGS and v is not None}
    train.update(flags)
    given |= set(flags)
    model_fields = field_names(model_cls) if model_cls is not None else []
    for key, value in parse_set_pairs(getattr(args, "set", None)).items():
        if key in fields and (key != "model" or model_cls is None):    # a task without a model class: its own
            train[key] = value
            given.add(key)
        elif key in model_fields:
            if isinstance(value, dict) and isinstance(model.get(key), dict):
                model[key] = {**model[key], **value}
            else:
                model[key] = value
            given.add("model")
        else:
            names = ", ".join(f for f in fields if f != "model")
            raise ConfigError(f"--set {key}: not an option; training options: {names}"
                              + (f"; model options: {', '.join(model_fields)}" if model_fields else ""))
    return train, model, given


def recorded_run(out) -> dict:
    """What the run in folder `out` recorded, for `--resume` to find its data before the engine checks it:
    ``{"data": its data's record, "train": its training options}`` from its checkpoint (else config.json);
    {} where neither can be read (the engine then says what is wrong)."""
    for name, train in (("last.json", "train_config"), ("config.json", "train")):
        try:
            record = json.loads((Path(out) / name).read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            data, options = record.get("data"), record.get(train)
            return {"data": data if isinstance(data, dict) else None,
                    "train": options if isinstance(options, dict) else {}}
    return {}


def build_config(config_cls, train: dict, model: dict | None):
    cfg = load_dataclass(config_cls, {**train, **({"model": model} if model is not None else {})}, "train config")
    cfg.validate()
    return cfg


def check_model_buildable(factory, what: str = "model config") -> None:
    """Build the model `factory()` makes on PyTorch's meta device (no memory, no data read): a config that
    names an unknown rule, solver or gradient, or gives a part a setting it does not take, is a one-line usage
    error (exit 2) before any work. Errors other than ValueError and TypeError are left to the real build."""
    import torch

    try:
        with torch.device("meta"):
            factory()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") \
            from None
    except Exception:
        pass


def finish_training(args, out: Path, result: dict, line: str) -> int:
    """Print the run's summary (rank 0) and leave cleanly under torchrun."""
    from deqnca.engine import distributed

    if int(os.environ.get("RANK", "0")) != 0:
        return distributed.finish(0)
    last = result["history"][-1] if result["history"] else {}
    summary = {"out": str(out), "checkpoint": str(out / "last"), "parameters": result["parameters"],
               "global_step": result["global_step"], "seconds": round(result["elapsed_s"], 1),
               **result["counters"], **last}
    print(strict_json(summary) if args.json else line.format(**{**summary, "last": last}))
    return distributed.finish(0)
