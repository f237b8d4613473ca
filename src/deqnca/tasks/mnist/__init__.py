"""MNIST classification by an equilibrium (the essay's experiment): the `EquilibriumModel` kind (encoder,
conditioning, rule, solver, gradient, read-out), its config and presets, task, evaluation, the NCA view's
figures, panoramas and label maps."""
