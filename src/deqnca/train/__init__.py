"""Training: one plain loop for every task, and atomic, pickle-free checkpoints."""
