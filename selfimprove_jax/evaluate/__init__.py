"""Evaluate: held-out scores of every iteration, the accept / roll back / stop gate,
the curriculum that moves difficulty, and the `eval` command."""
