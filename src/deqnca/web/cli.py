"""`deqnca web`: the live page's sub-command (torch-free; the exporter is imported when it runs)."""
from __future__ import annotations


def add_cli(subparsers):
    """Add `deqnca web --out DIR [--cell-model PATH] [--models DIR]` to an argparse sub-parser set."""
    p = subparsers.add_parser("web", help="write the live page (static HTML + JavaScript, opens from disk)",
                              description="Write a self-contained static page that runs the shipped models "
                                          "in the browser: draw a digit, grow the lizard, solve a maze.")
    p.add_argument("--out", default="out/web", help="output folder (default: out/web)")
    p.add_argument("--cell-model", default=None, metavar="PATH",
                   help="checkpoint of a model trained with readout=cell for the per-cell panel")
    p.add_argument("--models-dir", "--models", dest="models", default=None, metavar="DIR",
                   help="folder of the shipped models (default: the ones installed with deqnca)")
    p.add_argument("--no-examples", action="store_true", help="leave out the ten MNIST example digits")
    p.set_defaults(func=_cmd_web)
    return p


def _cmd_web(args) -> int:
    from deqnca.web.export import write_site

    index = write_site(args.out, args.models, args.cell_model, examples=not args.no_examples)
    print(f"wrote {index} (open it in a browser; no server needed)")
    return 0
