"""Growing neural cellular automata (Mordvintsev et al., Distill 2020) trained two ways: BPTT through the
rollout, or as an equilibrium. Its rule, model kind, config and recipes, task, targets, replays and
`deqnca grow` commands."""
