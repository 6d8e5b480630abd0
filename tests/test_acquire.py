"""Self-instruct (acquire/self_instruct.py): proposals screened for duplicates and
held-out leaks, kept when a verifier or a vote validates them; scripted generations."""

from selfimprove_jax.acquire import self_instruct
from selfimprove_jax.tasks import get_task, make_problem

from scripted import Scripted


TASK = get_task("arithmetic", operators="+")


def _problems(count=3):
  return TASK.heldout(count, 2)


# ----------------------------------------------------------------------------- self-instruct


def test_self_instruct_dedup_and_heldout_leaks_rejected():
  heldout = _problems(5)
  leak = heldout[0].prompt
  leak_reworded = "Compute this: What is {}? Answer with just the number.".format(
      heldout[1].metadata["expression"])
  examples = ["What is 11 + 22? Answer with just the number."]
  cands = ["What is 31 + 45? Answer with just the number.",
           "what is 31 + 45?  answer with just the number.",        # exact dup (normalised)
           leak, leak_reworded, examples[0], "", None,
           "What is 58 + 13? Answer with just the number."]
  status = self_instruct.screen(cands, TASK, heldout, examples, ngram=3, max_overlap=0.8)
  assert status == ["unique", "duplicate", "heldout_leak", "heldout_leak", "copy", "empty",
                    "empty", "unique"] or status[0] == "heldout_leak"
  # a proposal whose id is on the held-out side of the partition is always a leak
  for c, s in zip(cands, status):
    if s == "unique":
      assert not TASK.is_heldout(make_problem(c, 0).id)


def test_self_instruct_propose_validates_procedural_and_by_votes():
  heldout = _problems(4)
  seeds = TASK.train_problems(1, 6, 2)
  texts = iter(["Problem: What is 12 + 30? Answer with just the number.",
                "1. What is 12 + 30? Answer with just the number.",        # duplicate
                heldout[2].prompt,                                         # leak
                "Tell me a joke.",                                         # cannot parse
                "What is 40 + 41? Answer with just the number.\n\nThanks!"])
  gen = Scripted(lambda p, j, g: next(texts))
  kept, rows = self_instruct.propose(gen, TASK, seeds, heldout,
                                     self_instruct.Settings(proposals=5), seed=0)
  statuses = [r["status"] for r in rows]
  assert statuses.count("duplicate") == 1 and statuses.count("invalid") == 1
  assert "heldout_leak" in statuses
  good = [p for p in kept if not TASK.is_heldout(p.id)]
  assert good == kept and all(TASK.can_solve(p.prompt) == p.reference for p in kept)
  assert kept[0].reference == "42"
  assert seeds[0].prompt in gen.calls[0][0][0]   # the seed examples are shown
  # non-procedural: kept only when the model's own answers agree
  jtask = type("T", (), {"procedural": False, "is_heldout": lambda self, pid: False,
                          "extract_answer": lambda self, t, p=None: t.split()[-1]})()
  answers = {"Q1?": ["7", "7", "7", "8"], "Q2?": ["1", "2", "3", "1"]}
  vgen = Scripted(lambda p, j, g: f"it is {answers[p][j]}")
  out = self_instruct.check_validity(["Q1?", "Q2?"], jtask, vgen, votes=4, min_vote_share=0.6)
  assert out[0][0].reference == "7" and out[0][1]["vote_share"] == 0.75
  assert out[1][0] is None
