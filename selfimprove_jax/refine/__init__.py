"""Refine at inference: strategies that spend compute at answer time (best-of-N,
self-consistency, self-refine, execution feedback) and the training targets they make."""
