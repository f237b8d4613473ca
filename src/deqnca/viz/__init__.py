"""Visualisation of rollouts: channel projections, figures, GIFs and a static HTML report."""

from deqnca.viz.project import Projection

__all__ = ["Projection"]
