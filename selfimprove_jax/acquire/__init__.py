"""Acquire: the model's raw material -- sampling rounds scored by the verifier,
the training prompt stream, and problems the model proposes itself (self-instruct)."""
