"""Paradigms that make their own training samples, one module each: proposer-solver
self-play (self_play.py), SPIN (spin.py) and label-free RL with majority-vote rewards
(ttrl.py). Each module gives the functions of its `algorithms.Algorithm` entry (how a
round's samples are made, its batches, its metrics); the loop knows none of them."""
