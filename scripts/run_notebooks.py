"""Execute the notebooks in docs/notebooks/ and keep their outputs, as the docs site shows them.

Each notebook runs in a fresh python3 kernel (this interpreter, with ipykernel), from an empty temporary
folder, with torch on one thread (the machines are shared; the models are small), and is written back with
its outputs and without per-cell timings, so that a re-run changes the file only where a result changed.
tests/test_notebooks.py executes them the same way (`execute`), within a time budget each, and checks that
what a committed notebook prints is what its cells print.

    python scripts/run_notebooks.py                       # all of them, outputs written back
    python scripts/run_notebooks.py docs/notebooks/tour.ipynb --check    # run, compare, write nothing
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "docs" / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: Path, timeout: int = 300):
    """(the executed notebook, seconds): `path` run top to bottom in a new kernel from an empty folder."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as jupyter:
            # the python3 kernel is this interpreter, whatever kernels the machine has registered
            spec = Path(jupyter) / "kernels" / "python3"
            spec.mkdir(parents=True)
            (spec / "kernel.json").write_text(json.dumps({
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": KERNELSPEC["display_name"], "language": "python"}))
            os.environ.update({
                "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "JUPYTER_PATH": os.pathsep.join(p for p in [jupyter, os.environ.get("JUPYTER_PATH")] if p),
                "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH")] if p)})
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                    resources={"metadata": {"path": work}})
            t = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - t
            left = sorted(p.name for p in Path(work).iterdir())
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    if left:
        raise RuntimeError(f"{path.name} left files behind in its working folder: {left}")
    return nb, seconds


def printed(nb) -> list[str]:
    """What each code cell printed (streams and plain-text results), cell by cell."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        text = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                text.append(o.text)
            elif o.output_type in ("execute_result", "display_data") and "image/png" not in o.data:
                text.append(o.data.get("text/plain", ""))
        out.append("".join(text))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every docs/notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="compare what they print, write nothing")
    args = parser.parse_args(argv)
    import nbformat

    status = 0
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        before = nbformat.read(path, as_version=4)
        nb, seconds = execute(path)
        same = printed(nb) == printed(before)
        if not args.check:
            for cell in nb.cells:
                cell.metadata.pop("execution", None)
            nb.metadata.pop("jupytext", None)
            nb.metadata["kernelspec"] = KERNELSPEC
            nbformat.write(nb, path)
        size = path.stat().st_size / 1024
        print(f"{path.name}: {seconds:.1f} s, {size:.0f} KiB, prints {'the same' if same else 'something else'}")
        status |= args.check and not same
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
