"""Experiments: named compositions of rule, conditioning, solver, gradient and read-out."""
