"""The core floor: pure PyTorch, importing nothing above it — the model protocol, rules, conditionings,
solvers, gradients, read-outs, the NCA rollout, and the registry and config mechanisms they share."""
