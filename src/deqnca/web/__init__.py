"""The live page: a static site (HTML + plain JavaScript) that runs the shipped models in the browser."""
from .export import add_cli, write_site

__all__ = ["add_cli", "write_site"]
