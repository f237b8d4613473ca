"""Self-classifying MNIST digits (Randazzo et al., Distill 2020): every cell of a digit learns its label — the
article's rule trained by BPTT, or an equilibrium (contraction, consensus) trained implicitly. Its model kind,
rules (`CELL_RULES`), config and presets, task, evaluation, figures and `deqnca cells` commands."""
