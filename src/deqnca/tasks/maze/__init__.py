"""Mazes: train on small ones, solve large ones (docs/mazes.md). Generators and the BFS target, the maze
rules (`recall`, `geodesic`), the model kind, config and presets, task, evaluation, pictures and `deqnca maze`
commands."""
