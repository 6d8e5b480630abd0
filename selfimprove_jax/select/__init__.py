"""Select: what is worth learning from -- the filters and the difficulty ledger,
the LLM-as-judge and its rubric."""
