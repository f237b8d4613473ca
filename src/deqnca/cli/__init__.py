"""The `deqnca` command. Argument parsing only: each command group is one module, its flags derived
from the config dataclasses, its work done by the tasks and the engine.

Exit codes: 0 success, 1 bad input (missing/corrupt data or checkpoint, a run that cannot go on),
2 usage error (unknown option, bad value), 130 interrupted (a usable checkpoint is left behind).
Set DEQNCA_DEBUG=1 (or pass --debug) to see the traceback of an error.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__

EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: `deqnca train | eval | info | export | rollout | demo | grow ... | maze ...`."""
    from ..web.export import add_cli as add_web_cli
    from . import cells, grow, maze, mnist

    parser = argparse.ArgumentParser(prog="deqnca", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"deqnca {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    mnist.add_cli(sub)
    grow.add_cli(sub)
    maze.add_cli(sub)
    cells.add_cli(sub)
    add_web_cli(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code."""
    from ..configs import ConfigError
    from .common import load_plugins, plugin_specs

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("DEQNCA_DEBUG"))
    try:
        load_plugins(plugin_specs(argv))
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except ConfigError as e:
        if debug:
            raise
        print(f"deqnca: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FloatingPointError, OSError, RuntimeError) as e:
        if debug:
            raise
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f"deqnca: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
