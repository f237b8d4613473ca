"""Growing neural cellular automata trained two ways: BPTT through the rollout, or as an equilibrium."""
