"""The live page: a static site (HTML + plain JavaScript) that runs the shipped models in the browser.
`write_site` (in `export`, which needs torch) is loaded on first use; `add_cli` (in `cli`) is torch-free."""
from __future__ import annotations

import importlib

__all__ = ["add_cli", "write_site"]
_EXPORTS = {"add_cli": "cli", "write_site": "export"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deqnca.web' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
