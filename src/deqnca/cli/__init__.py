"""The `deqnca` command. Argument parsing only: each command group is one module, its flags derived
from the config dataclasses, its work done by the tasks and the engine.

Exit codes: 0 success, 1 bad input (missing/corrupt data or checkpoint, a run that cannot go on, an
output that cannot be written), 2 usage error (unknown option, bad value, a run folder in use by another
run), 130 interrupted by Ctrl-C and 143 by SIGTERM during training (a usable checkpoint is left behind).
Every error is one line on stderr; set DEQNCA_DEBUG=1 (or pass --debug) to see its traceback.
docs/guarantees.md lists what is checked.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from deqnca import __version__

EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
SUMMARY = ("Train, evaluate and watch cellular models: local rules that you iterate step by step (a neural "
           "cellular automaton) or solve to their fixed point (a deep equilibrium model).")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``deqnca train: error: argument --epochs: ... (see --help)``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# what to do about a file-system error, by its errno
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk (--out)",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere (--out)",
    errno.EACCES: "choose a folder you can write to (--out) or fix its permissions",
    errno.EPERM: "choose a folder you can write to (--out) or fix its permissions",
    errno.EROFS: "choose a folder on a writable disk (--out)",
    errno.ENOTDIR: "a file is in the way where a folder is needed: choose another --out or move the file",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another --out or move the file",
    errno.EISDIR: "a folder is in the way where a file is needed: choose another name",
}


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: the path, what went wrong, what to do."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e).strip() or type(e).__name__
    hint = _OS_HINTS.get(e.errno)
    return f"{where}{what}" + (f"; {hint}" if hint else "")


def library_input_errors() -> tuple:
    """The error types that the libraries reading input files raise for a malformed file and that are not
    a ValueError or OSError already: safetensors' SafetensorError, PIL's DecompressionBombError, zip's and
    zlib's. Only libraries already imported are asked (nothing is imported for it)."""
    import zipfile
    import zlib

    found = [zipfile.BadZipFile, zlib.error, EOFError]
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(getattr(safetensors, "SafetensorError", None), type):
        found.append(safetensors.SafetensorError)
    image = sys.modules.get("PIL.Image")
    if image is not None and isinstance(getattr(image, "DecompressionBombError", None), type):
        found.append(image.DecompressionBombError)
    return tuple(found)


def error_line(e: BaseException) -> str:
    """The one line an error is reported in: a file-system error's path, what went wrong and what to do;
    otherwise the message's last line, named by the error's type where the message alone says too little
    (e.g. ``Expecting value: line 1 column 1 (char 0)`` is a ``JSONDecodeError``)."""
    if isinstance(e, OSError) and e.errno is not None:
        return os_error_line(e)
    if isinstance(e, MemoryError):
        return "out of memory; use a smaller model, batch or input"
    text = str(e).strip()
    line = text.splitlines()[-1].strip() if text else ""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({line})"
    if isinstance(e, library_input_errors()):
        return f"{type(e).__name__}" + (f": {line}" if line else "") + "; the input file is malformed"
    return line or type(e).__name__


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The whole command line: `deqnca train | eval | info | export | rollout | demo | grow ... | maze ...`.
    With `argv`, a `train --task NAME` in it gets that task's flags (built after `--plugin` modules ran)."""
    from deqnca.cli import mnist, tasks
    from deqnca.tasks.cells import cli as cells
    from deqnca.tasks.grow import cli as grow
    from deqnca.tasks.maze import cli as maze
    from deqnca.web.cli import add_cli as add_web_cli

    parser = Parser(prog="deqnca", description=SUMMARY)
    parser.add_argument("--version", action="version", version=f"deqnca {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    task = tasks.task_from_argv(argv)
    mnist.add_cli(sub, train=task in (None, "mnist"))
    if task not in (None, "mnist"):
        tasks.add_task_train(sub, task)
    grow.add_cli(sub)
    maze.add_cli(sub)
    cells.add_cli(sub)
    add_web_cli(sub)
    _plugin_flag_on_every_command(parser)
    return parser


PLUGIN_HELP = ("import a Python file or module first — it runs as code with your permissions — e.g. one that "
               "registers your own rule, solver, task or model kind (repeatable; also $DEQNCA_PLUGINS)")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def _plugin_flag_on_every_command(parser) -> None:
    """`--plugin` on every command (a checkpoint of a user's rule or kind loads only with its plugin)."""
    for command in _subparsers(parser):
        if any(_subparsers(command)):
            _plugin_flag_on_every_command(command)
        elif "--plugin" not in command._option_string_actions:
            command.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE", help=PLUGIN_HELP)


def check_before_plugins(argv) -> None:
    """Refuse an invalid command line before any plugin code runs: the line is parsed by the built-in
    commands, with registry names unchecked (a plugin may register them) and, for `train` only, flags left
    unknown (a plugin task's options); what is still wrong is a usage error (exit 2) and no plugin ran."""
    from deqnca.core import registry

    with registry.names_unchecked():
        args, unknown = build_parser().parse_known_args(argv)
    if unknown and args.command != "train":
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)}")


def main(argv=None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code."""
    from deqnca.core.configs import ConfigError
    from deqnca.engine.commandline import load_plugins, plugin_specs

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("DEQNCA_DEBUG"))
    argv = [a for a in argv if a != "--debug"]         # accepted anywhere on the line, e.g. after the command
    try:
        specs = plugin_specs(argv)
        if specs:
            check_before_plugins(argv)
            load_plugins(specs)
        args = build_parser(argv).parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt as e:            # Ctrl-C, or SIGTERM during training (engine.trainer.Terminated)
        print(str(e) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except ConfigError as e:
        if debug:
            raise
        print(f"deqnca: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FloatingPointError, OSError, RuntimeError, MemoryError) as e:
        if debug:
            raise
        print(f"deqnca: error: {error_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:          # a library's own error for a malformed input file (safetensors, PIL, zip)
        if debug or not isinstance(e, library_input_errors()):
            raise
        print(f"deqnca: error: {error_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
