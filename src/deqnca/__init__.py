"""deqnca: a spatial deep equilibrium model is a neural cellular automaton run to its fixed point.

Vocabulary (one module each): rules, conditioning, solvers, gradients, readout; `model.EquilibriumModel`
composes them.
"""

__version__ = "0.1.0"
