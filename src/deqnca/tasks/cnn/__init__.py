"""The small CNN baseline beside the equilibrium classifier (same data and budget): model and task."""
