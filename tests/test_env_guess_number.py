"""The guess_number game: its task (stable ids, disjoint splits, the single-guess
verifier), scripted games through the environment (binary search, higher / lower,
invalid and hostile replies, the progress reward), bad options and refused tasks as
one-line errors, and episodes of a tiny random model."""

import math

import pytest

from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.environments import make
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import get_preset, init_params
from selfimprove_jax.sampling import Sampler, SamplingParams
from selfimprove_jax.tasks import get_task
from selfimprove_jax.tasks import guess_number as game
from selfimprove_jax.weights import tokenizer as tokenizer_lib


NEXT = "What is your next guess? Answer with just the number."


def _spec(task=None, max_turns=10, **options):
  return make("guess_number", task or get_task("guess_number"), max_turns=max_turns,
              max_tokens=320, options=options)


def _env(problem, **options):
  env = _spec(**options).make()
  assert env.reset(problem) == problem.prompt
  return env


# the task --------------------------------------------------------------------------------

def test_task_ids_are_stable_and_splits_disjoint():
  task = get_task("guess_number")
  a, b = task.train_problems(0, 50), get_task("guess_number").train_problems(0, 50)
  assert a == b and len({p.id for p in a}) == 50
  for p in a:   # one prompt hides one number, in range, and shows no digit but N's
    assert p.reference == str(game.hidden_number(p.metadata["game"], 100))
    assert 1 <= int(p.reference) <= 100
    assert "".join(c for c in p.prompt if c.isdigit()) == "1100"
  validation, test = task.heldout(60), task.heldout(60, difficulty=2)
  fresh = task.fresh(40, seed=1, exclude=frozenset(p.id for p in validation))
  assert len(fresh) == 40 and not {p.id for p in fresh} & {p.id for p in validation}
  train = {p.id for p in a + task.train_problems(1, 200)}
  for p in validation + test + fresh:
    assert task.is_heldout(p.id) and p.id not in train
  assert all(p.metadata["high"] == 20 for p in test)
  # the hidden numbers cover the range (no bias toward one end)
  numbers = [int(p.reference) for p in task.train_problems(2, 400)]
  assert min(numbers) <= 10 and max(numbers) >= 90 and len(set(numbers)) > 60


def test_single_guess_verifier():
  task = get_task("guess_number", difficulty=1)
  p = task.problem(0, 0)
  n = int(p.reference)
  assert task.score(p, str(n)) == 1.0 and task.score(p, f"My guess is {n}.") == 1.0
  assert task.score(p, f"#### {n}") == 1.0
  assert task.score(p, str(n % 10 + 1)) == 0.0   # another number in [1, 10]
  for reply in ("no idea", "", f"{n}.5", f"{n}/2", "x" * 10_000):
    assert task.score(p, reply) == 0.0 and task.extract_answer(reply) is None
  assert task.can_solve(p.prompt) is None


def test_bad_task_options():
  for bad in (0, 8, "4", True, 4.0):
    with pytest.raises(UserError, match="difficulty must be an integer in"):
      get_task("guess_number", difficulty=bad)
  with pytest.raises(UserError, match="heldout_fraction"):
    get_task("guess_number", heldout_fraction=1.5)
  with pytest.raises(UserError, match="bad options"):
    get_task("guess_number", high=100)


# scripted games ----------------------------------------------------------------------------

@pytest.mark.parametrize("level", sorted(game.LEVELS))
def test_binary_search_solves_every_game_within_the_optimum(level):
  task = get_task("guess_number", difficulty=level)
  spec = _spec(task)
  high = game.LEVELS[level]
  assert spec.optimal_turns(task.problem(0, 0)) == math.ceil(math.log2(high + 1))
  for p in task.train_problems(0, 30):
    env, lo, hi = _env(p), 1, high
    for turn in range(1, spec.optimal_turns(p) + 1):
      guess = (lo + hi) // 2
      step = env.step(str(guess), "eos")
      assert step.status == "ok"
      if step.done:
        assert step.reward == 1.0 and guess == int(p.reference)
        assert step.detail == f"solved in {turn}"
        break
      assert step.reward == 0.0 and step.detail == ""
      if "higher" in step.observation:
        lo = guess + 1
      else:
        assert "lower" in step.observation
        hi = guess - 1
    else:
      pytest.fail(f"binary search did not solve {p.id} in {spec.optimal_turns(p)} turns")


def test_replies_say_higher_or_lower_correctly_and_flag_wasted_guesses():
  task = get_task("guess_number")
  p = next(q for q in task.train_problems(0, 50) if 2 < int(q.reference) < 99)
  n = int(p.reference)
  env = _env(p)
  step = env.step(f"I guess {n - 1}", "eos")
  assert step.observation == f"My number is higher than {n - 1}. {NEXT}"
  assert (step.done, step.reward, step.status, step.detail) == (False, 0.0, "ok", "")
  assert env.step(str(n - 1), "eos").detail == "repeated"
  step = env.step(str(n + 1), "eos")
  assert step.observation == f"My number is lower than {n + 1}. {NEXT}"
  assert step.detail == ""
  assert env.step(str(n + 2), "eos").detail == "ruled out"   # the "lower" said not
  assert env.step(str(n - 2), "eos").detail == "ruled out"   # the "higher" said not
  step = env.step(f"Is it {n}?", "eos")
  assert (step.done, step.reward, step.status) == (True, 1.0, "ok")


def test_invalid_and_hostile_replies():
  p = get_task("guess_number").problem(0, 3)
  n = int(p.reference)
  env = _env(p)
  wrong = 1 if n != 1 else 2
  for reply, detail in [("higher!", "no whole number"), ("", "no whole number"),
                        ("9" * 5000, "no whole number"),        # too long to read
                        ("10" + "0" * 50, "out of range"), ("-5", "out of range"),
                        ("0", "out of range"), ("101", "out of range"),
                        (f"{n}.5", "no whole number")]:
    step = env.step(reply, "eos")
    assert (step.status, step.detail, step.reward, step.done) == ("invalid", detail, 0.0,
                                                                  False), reply
    assert "between 1 and 100" in step.observation and len(step.observation) < 120
  # a reply cut off at its budget states only the number it opened with
  step = env.step(f"Is it {n}? Or", "length")
  assert (step.status, step.done) == ("invalid", False) and "too long" in step.observation
  for cut in (f"{n}.5 is", f"{n}0000000000 is", f"{n},000 is"):
    assert env.step(cut, "length").status == "invalid", cut
  step = env.step(f"{wrong} is a whole number between 1 and", "length")
  assert step.status == "ok" and f"than {wrong}." in step.observation
  # several numbers: the last one is the guess, so listing them cannot win
  step = env.step(f"{n} or maybe {wrong}", "eos")
  assert not step.done and f"than {wrong}." in step.observation
  assert env.step(f"Between 1 and 100, I guess {n}", "eos").done


def test_progress_reward_is_partial_and_below_one():
  task = get_task("guess_number")
  p = next(q for q in task.train_problems(0, 50) if 30 < int(q.reference) < 70)
  n = int(p.reference)
  outcome, progress = _env(p), _env(p, reward="progress")
  assert outcome.step("1", "eos").reward == 0.0
  first = progress.step("50", "eos").reward   # halves the range: 1 bit of log2(100)
  assert first == pytest.approx(0.5 * math.log2(100 / 50) / math.log2(100))
  second = progress.step(str(n - 1 if n > 50 else n + 1), "eos").reward
  assert first < second < 1.0
  assert progress.step("oops", "eos").reward == 0.0      # an invalid last turn scores 0
  assert progress.step(str(n), "eos").reward == 1.0


def test_range_hint():
  p = get_task("guess_number").problem(0, 0)
  n = int(p.reference)
  env = _env(p, range_hint=True)
  if n > 1:
    assert env.step("1", "eos").observation == (
        f"My number is higher than 1: it is between 2 and 100. {NEXT}")


# errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, fragment", [
    ({"reward": "shaped"}, "environment.options.reward='shaped' must be one of outcome, "
     "progress"),
    ({"reward": 1}, "environment.options.reward=1 must be one of outcome, progress"),
    ({"range_hint": "yes"}, "environment.options.range_hint='yes' must be True or False"),
    ({"hint": True}, "environment.options.hint=True is not an option; the options are "
     "reward, range_hint"),
])
def test_bad_environment_options(options, fragment):
  with pytest.raises(UserError) as e:
    _spec(**options)
  assert str(e.value).startswith("environment.name='guess_number': ")
  assert fragment in str(e.value) and "\n" not in str(e.value)


def test_other_tasks_are_refused():
  with pytest.raises(UserError) as e:
    _spec(get_task("arithmetic"))
  assert str(e.value) == ("environment.name='guess_number': plays only task "
                          "guess_number, not 'arithmetic'")


# episodes of a tiny random model --------------------------------------------------------------

def test_tiny_model_episodes():
  config = get_preset("tiny")
  params = dict(init_params(config, seed=3))
  params["embedding"] = params["embedding"] * 4.0   # peaked logits: short turns
  tokenizer = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())
  sampler = Sampler(config, eos_ids=(2,), tokenizer=tokenizer, max_batch=4)
  task = get_task("guess_number", difficulty=1)
  spec = _spec(task, max_turns=3)
  problems = task.heldout(3)
  groups = episodes_lib.run(sampler, params, tokenizer, spec, problems,
                            SamplingParams(temperature=1.0, max_new_tokens=6), n=2, seed=0)
  samples = [s for g in groups for s in g]
  assert len(samples) == 6
  for s in samples:
    assert 1 <= len(s.turns) <= 3
    assert s.episode_end in ("done", "max_turns", "max_tokens")
    assert s.reward == (1.0 if s.episode_end == "done" else 0.0)
    for t in s.turns:   # every step was judged by the game's rules
      assert t["status"] in ("ok", "invalid")
      if t["status"] == "invalid":
        assert "between 1 and 10" in t["observation"] or t is s.turns[-1]
  metrics = episodes_lib.process_metrics(samples)
  assert 1 <= metrics["episode_turns"] <= 3
  assert metrics["episode_invalid"] >= 0 and metrics["episode_tool_calls"] == 0
