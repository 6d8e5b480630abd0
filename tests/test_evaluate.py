"""The curriculum (evaluate/curriculum.py): difficulty moves within the band and range."""

from selfimprove_jax.evaluate import curriculum


# ----------------------------------------------------------------------------- curriculum


def test_curriculum_moves_within_band_and_range():
  rng = (1, 8)
  assert curriculum.step(2, 0.9, rng) == (3, {"from": 2, "to": 3, "pass_rate": 0.9,
                                              "reason": "pass rate 0.90 > 0.7"})
  assert curriculum.step(2, 0.1, rng)[0] == 1
  assert curriculum.step(2, 0.5, rng) == (2, None)
  assert curriculum.step(8, 0.95, rng) == (8, None)     # already hardest
  assert curriculum.step(1, 0.0, rng) == (1, None)
  assert curriculum.step(3, None, rng) == (3, None)
  ledger = {"a": {"attempts": 4, "successes": 4, "last_seen": 2},
            "b": {"attempts": 4, "successes": 0, "last_seen": 2},
            "c": {"attempts": 8, "successes": 8, "last_seen": 1}}
  assert curriculum.ledger_pass_rate(ledger, 2) == 0.5
  assert curriculum.ledger_pass_rate(ledger, 3) is None
