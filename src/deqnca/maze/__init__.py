"""Mazes: train on small ones, solve large ones (docs/mazes.md). Data lives in data/mazes.py."""
