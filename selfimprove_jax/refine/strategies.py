"""Inference-time refinement: spend compute at answer time without changing weights.

Strategies are functions in a registry, chosen by name:
  greedy            one greedy completion (what every strategy is compared with);
  best_of_n         N candidates, keep the one a scorer ranks first: the task verifier
                    where there is one, else a judge, else mean log-prob. Candidate 0 is
                    the greedy completion, so with the verifier best_of_n is never
                    below greedy: it returns a verified-correct candidate whenever one
                    exists, and greedy is one of them;
  self_consistency  N samples, extract answers, majority vote (ties: summed log-prob,
                    then first seen) and its vote share (Wang et al. 2023);
  self_refine       answer, the model critiques it, revises, for up to R rounds, stopping
                    when the critique finds nothing to fix (Madaan et al. 2023); every
                    round is kept.
  execution_feedback answer, run it, show the model what failed (the first failing test
                    or the error, from the task's sandboxed verifier; without a task, the
                    error of running its code block) and ask for a fix, up to R rounds,
                    stopping when it passes (self-debugging, Chen et al. 2023; RLEF,
                    Gehring et al. 2024); every round is kept.

All model calls go through one `policy.GenerateFn` (prompt texts -> n `Sample`s each),
so the decisions (`pick_best`, `vote`, `critique_approves`) are unit-testable with
scripted generations. Each step of a strategy is one batched generate call for all
prompts.

`heldout_metrics` scores each strategy on the held-out split beside greedy; the training
targets the strategies make are in refine_targets.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import numpy as np

from selfimprove_jax import sandbox
from selfimprove_jax.errors import UserError, check_names
from selfimprove_jax.policy import GenerateFn, model_generate
from selfimprove_jax.records import Sample, majority, pseudo_label
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.select import rubric
from selfimprove_jax.tasks import answers, verify
from selfimprove_jax.tasks.code_task import extract_code
from selfimprove_jax.tasks.problem import HIDDEN_REFERENCE, Problem, Verdict


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
  """Knobs shared by the strategies."""
  n: int = 8                     # candidates (best_of_n) / votes (self_consistency)
  rounds: int = 2                # self_refine: critique -> revise rounds at most
  scorer: str = "auto"           # best_of_n: auto | verifier | judge | logprob
  sample: SamplingParams = SamplingParams(max_new_tokens=48)   # the N samples
  critique_tokens: int = 64      # self_refine critique length; revisions use sample's
  judge_samples: int = 1
  judge_tokens: int = 64

  @property
  def greedy(self) -> SamplingParams:
    return SamplingParams(greedy=True, max_new_tokens=self.sample.max_new_tokens,
                          stop_sequences=self.sample.stop_sequences)


@dataclasses.dataclass
class Context:
  """What a strategy may use: the model, and where there is one, a task with the
  problems behind the prompts (its verifier and answer extraction) and a judge."""
  generate: GenerateFn
  task: object = None
  problems: Optional[Sequence] = None     # one Problem per prompt (for the verifier)
  judge: Optional[GenerateFn] = None      # None: best_of_n 'auto' falls back to log-prob
  prompts: Optional[list] = None          # set by run_strategy (the judge quotes them)

  def extract(self, text: str, i: int) -> Optional[str]:
    if self.task is not None:
      return self.task.extract_answer(text, self.problems[i] if self.problems else None)
    return default_extract(text)


@dataclasses.dataclass
class Refined:
  """A strategy's result for one prompt."""
  prompt: str
  text: str                      # the final answer text
  answer: Optional[str]          # its extracted answer
  chosen: Optional[Sample]       # the completion behind it (a training target)
  candidates: list
  info: dict


def to_json(r: Refined, prompt_index: int, strategy: str) -> dict:
  """What `generate --strategy --json` prints for one prompt (every candidate and, for
  self_refine, every round)."""
  return {"prompt_index": prompt_index, "strategy": strategy, "text": r.text,
          "answer": r.answer, "candidates": [c.completion for c in r.candidates], **r.info}


def default_extract(text: str) -> Optional[str]:
  """Without a task: a marked answer, else the last number, else the normalised text."""
  found = answers.extract_marked(text) or answers.last_number(text)
  if found is None:
    found = answers.normalize_text(text) if isinstance(text, str) else None
  return found or None


# ----------------------------------------------------------------------------- decisions


def pick_best(scores: Sequence[float], samples: Sequence[Sample]) -> int:
  """Index of the highest score; ties go to the higher mean log-prob, then the first."""
  return max(range(len(scores)),
             key=lambda j: (scores[j], samples[j].mean_logprob, -j))


def vote(answers_: Sequence[Optional[str]], samples: Sequence[Sample]):
  """Majority answer, its vote share and the index of the sample behind it (the most
  likely one among those giving it); (None, 0.0, None) when no answer was found."""
  best, share = majority(answers_, [s.logprob for s in samples])
  if best is None:
    return None, 0.0, None
  idx = [j for j, a in enumerate(answers_) if a == best]
  return best, share, max(idx, key=lambda j: (samples[j].logprob, -j))


def label_votes(task, problem, samples: Sequence[Sample], min_share: float):
  """A label-free training label for one prompt's samples: (votes, label, share).

  The rule every self-labelled target shares (label-free SFT's self_consistency targets,
  TTRL's agreement reward): each sample's answer, extracted as if the problem had no
  reference (nothing to leak) and keyed by `answers.vote_key` (numbers as numbers),
  votes; a sample cut off at its token budget (finish_reason 'length') casts no vote,
  since the last number of an unfinished reply is usually one restated from the
  question, not an answer. `records.pseudo_label` elects the majority when it holds at
  least `min_share` of all the samples and is not tied, else there is no label (None).
  An inference answer must always be given and breaks ties by log-prob (`vote`)."""
  meta = {k: v for k, v in problem.metadata.items() if k != HIDDEN_REFERENCE}
  blind = Problem(problem.id, problem.prompt, "", problem.difficulty, meta)
  votes = [None if s.finish_reason == "length" else
           answers.vote_key(task.extract_answer(s.completion, blind)) for s in samples]
  label, share = pseudo_label(votes, min_share)
  return votes, label, share


_APPROVE = re.compile(r"\bno (?:issues?|errors?|mistakes?|problems?)\b|"
                      r"\bnothing (?:to|that needs to be) (?:fix|change|improve|correct)",
                      re.IGNORECASE)


def critique_approves(text: str) -> bool:
  """True when a critique finds nothing to fix (the prompt asks for "NO ISSUES")."""
  return isinstance(text, str) and bool(_APPROVE.search(text))


CRITIQUE_PROMPT = (
    "Here is a question and an answer to it.\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
    "Check the answer carefully. If it is correct, reply with exactly \"NO ISSUES\". "
    "Otherwise explain briefly what is wrong.")
REVISE_PROMPT = (
    "{question}\n\nA previous answer was: {answer}\n\nFeedback on it: {critique}\n\n"
    "Write a corrected answer to the question.")


def critique_prompt(question: str, answer: str) -> str:
  return CRITIQUE_PROMPT.format(question=question, answer=answer.strip())


def revise_prompt(question: str, answer: str, critique: str) -> str:
  return REVISE_PROMPT.format(question=question, answer=answer.strip(),
                              critique=critique.strip())


# ----------------------------------------------------------------------------- scorers


def _verifier_scores(ctx, idx, samples, cfg, seed):
  verdicts = verify(ctx.task, [ctx.problems[i] for i in idx], [s.completion for s in samples],
                    truncated=[s.finish_reason == "length" for s in samples])
  return [float(v.reward) for v in verdicts]


def _judge_scores(ctx, idx, samples, cfg, seed):
  questions = [ctx.prompts[i] for i in idx]
  scores, _ = rubric.judge(ctx.judge or ctx.generate, questions, [s.completion for s in samples],
                              samples=cfg.judge_samples, max_new_tokens=cfg.judge_tokens,
                              seed=seed)
  return [-1.0 if s is None else s for s in scores]   # unparsed ranks last


def _logprob_scores(ctx, idx, samples, cfg, seed):
  return [s.mean_logprob for s in samples]


SCORERS = {"verifier": _verifier_scores, "judge": _judge_scores, "logprob": _logprob_scores}


def resolve_scorer(name: str, ctx: Context) -> str:
  """'auto' -> verifier when the prompts have problems, else judge when one is set,
  else logprob. An explicit 'verifier' without problems is a UserError."""
  if name == "auto":
    if ctx.task is not None and ctx.problems is not None:
      return "verifier"
    return "judge" if ctx.judge is not None else "logprob"
  if name not in SCORERS:
    raise UserError(f"unknown best_of_n scorer {name!r}; known: auto, {', '.join(SCORERS)}")
  if name == "verifier" and (ctx.task is None or ctx.problems is None):
    raise UserError("best_of_n scorer 'verifier' needs a task with reference answers")
  return name


# ----------------------------------------------------------------------------- strategies


def greedy(ctx: Context, prompts, cfg: StrategyConfig, seed: int) -> list[Refined]:
  """One greedy completion per prompt."""
  out = ctx.generate(prompts, cfg.greedy, 1, seed)
  return [Refined(p, s[0].completion, ctx.extract(s[0].completion, i), s[0], s, {})
          for i, (p, s) in enumerate(zip(prompts, out))]


def best_of_n(ctx: Context, prompts, cfg: StrategyConfig, seed: int) -> list[Refined]:
  """Greedy + (N-1) samples per prompt; the scorer's first choice wins."""
  first = ctx.generate(prompts, cfg.greedy, 1, seed)
  rest = ctx.generate(prompts, cfg.sample, cfg.n - 1, seed + 1) if cfg.n > 1 else \
      [[] for _ in prompts]
  cands = [a + b for a, b in zip(first, rest)]
  scorer = resolve_scorer(cfg.scorer, ctx)
  idx = [i for i, c in enumerate(cands) for _ in c]
  flat = [s for c in cands for s in c]
  scores = SCORERS[scorer](ctx, idx, flat, cfg, seed + 2)
  out, pos = [], 0
  for i, (p, c) in enumerate(zip(prompts, cands)):
    sc = scores[pos:pos + len(c)]
    pos += len(c)
    j = pick_best(sc, c)
    out.append(Refined(p, c[j].completion, ctx.extract(c[j].completion, i), c[j], c,
                       {"scorer": scorer, "scores": sc, "chosen_index": j}))
  return out


def self_consistency(ctx: Context, prompts, cfg: StrategyConfig, seed: int) -> list[Refined]:
  """N samples per prompt; the majority answer and its vote share."""
  out = []
  for i, (p, c) in enumerate(zip(prompts, ctx.generate(prompts, cfg.sample, cfg.n, seed))):
    ans = [ctx.extract(s.completion, i) for s in c]
    best, share, j = vote(ans, c)
    out.append(Refined(p, "" if j is None else c[j].completion, best, None if j is None else c[j],
                       c, {"vote_share": share, "answers": ans}))
  return out


def self_refine(ctx: Context, prompts, cfg: StrategyConfig, seed: int,
                initial: Optional[Sequence[Sample]] = None) -> list[Refined]:
  """Answer (greedy, or `initial`), then up to `cfg.rounds` of critique -> revise;
  a prompt stops as soon as its critique approves. `info['rounds']` keeps every round
  ({answer, critique, approved[, revision]}), `info['stopped']` says why it ended."""
  if initial is None:
    initial = [s[0] for s in ctx.generate(prompts, cfg.greedy, 1, seed)]
  current = list(initial)
  rounds = [[] for _ in prompts]
  stopped = ["max_rounds"] * len(prompts)
  active = list(range(len(prompts)))
  crit_sp = SamplingParams(greedy=True, max_new_tokens=cfg.critique_tokens)
  for r in range(cfg.rounds):
    if not active:
      break
    crit = ctx.generate([critique_prompt(prompts[i], current[i].completion) for i in active],
                        crit_sp, 1, seed + 2 * r + 1)
    revise = []
    for i, c in zip(active, crit):
      ok = critique_approves(c[0].completion)
      rounds[i].append({"answer": current[i].completion, "critique": c[0].completion, "approved": ok})
      if ok:
        stopped[i] = "approved"
      else:
        revise.append((i, c[0].completion))
    revised = ctx.generate([revise_prompt(prompts[i], current[i].completion, t) for i, t in revise],
                           cfg.greedy, 1, seed + 2 * r + 2)
    for (i, _), s in zip(revise, revised):
      current[i] = s[0]
      rounds[i][-1]["revision"] = s[0].completion
    active = [i for i, _ in revise]
  return [Refined(p, current[i].completion, ctx.extract(current[i].completion, i), current[i],
                  [initial[i]], {"rounds": rounds[i], "stopped": stopped[i],
                                 "revised": current[i] is not initial[i]})
          for i, p in enumerate(prompts)]


FEEDBACK_PROMPT = (
    "{question}\n\nYour previous answer was:\n{answer}\n\nIt was run and checked, and it "
    "failed: {feedback}\n\nFix it and write the complete corrected answer.")
# Without a task, a code block is run as a program under these limits.
FREE_TEXT_LIMITS = sandbox.Limits(timeout_s=2.0, memory_mb=256)


def feedback_prompt(question: str, answer: str, feedback: str) -> str:
  return FEEDBACK_PROMPT.format(question=question, answer=answer.strip(),
                                feedback=feedback.strip())


def check_answers(ctx: Context, idx: Sequence[int], texts: Sequence[str]) -> list[Verdict]:
  """Execution feedback for each text: the task's verifier where the prompts have
  problems (reward 1 = passed); else the text's code block run in the sandbox (passed =
  it runs without error; no code block = nothing to check, passed)."""
  if ctx.task is not None and ctx.problems is not None:
    verdicts = verify(ctx.task, [ctx.problems[i] for i in idx], list(texts))
    return [v if v.reward >= 1.0 or v.detail else
            Verdict(v.reward, v.status, f"the answer is wrong ({v.status})" if v.status != "ok"
                    else "the answer is wrong") for v in verdicts]
  codes = [extract_code(t) for t in texts]
  runs = sandbox.run_python_batch([c for c in codes if c], limits=FREE_TEXT_LIMITS)
  out, k = [], 0
  for c in codes:
    if c is None:
      out.append(Verdict(1.0, "ok", "no code to run"))
      continue
    r = runs[k]
    k += 1
    tail = " ".join(r.stderr.strip().splitlines()[-1:])
    out.append(Verdict(1.0 if r.ok else 0.0, r.status,
                       "" if r.ok else f"{r.detail}: {tail}".strip(": ")[:400]))
  return out


def execution_feedback(ctx: Context, prompts, cfg: StrategyConfig, seed: int,
                       initial: Optional[Sequence[Sample]] = None) -> list[Refined]:
  """Answer (greedy, or `initial`), check it (`check_answers`), and while it fails show
  the model what failed and take its fix, for up to `cfg.rounds` rounds. `info['rounds']`
  keeps every round ({answer, reward, status, feedback[, revision]}), `info['stopped']`
  says why it ended ('passed' | 'max_rounds'), `info['reward']` is the final answer's."""
  if initial is None:
    initial = [s[0] for s in ctx.generate(prompts, cfg.greedy, 1, seed)]
  current = list(initial)
  rounds = [[] for _ in prompts]
  stopped = ["max_rounds"] * len(prompts)
  final = [0.0] * len(prompts)
  active = list(range(len(prompts)))
  for r in range(cfg.rounds + 1):    # the last pass only checks the last revision
    if not active:
      break
    verdicts = check_answers(ctx, active, [current[i].completion for i in active])
    failing = []
    for i, v in zip(active, verdicts):
      final[i] = float(v.reward)
      if v.reward >= 1.0:
        stopped[i] = "passed"
      if r < cfg.rounds:
        rounds[i].append({"answer": current[i].completion, "reward": float(v.reward),
                          "status": v.status, "feedback": v.detail})
        if v.reward < 1.0:
          failing.append(i)
    if not failing:
      break
    fixed = ctx.generate([feedback_prompt(prompts[i], current[i].completion, rounds[i][-1]["feedback"])
                          for i in failing], cfg.greedy, 1, seed + r + 1)
    for i, s in zip(failing, fixed):
      current[i] = s[0]
      rounds[i][-1]["revision"] = s[0].completion
    active = failing
  return [Refined(p, current[i].completion, ctx.extract(current[i].completion, i), current[i],
                  [initial[i]], {"rounds": rounds[i], "stopped": stopped[i], "reward": final[i],
                                 "revised": current[i] is not initial[i]})
          for i, p in enumerate(prompts)]


STRATEGIES = {"greedy": greedy, "best_of_n": best_of_n, "self_consistency": self_consistency,
              "self_refine": self_refine, "execution_feedback": execution_feedback}
# strategies that revise a first answer over rounds (their knob is cfg.rounds)
REVISING = ("self_refine", "execution_feedback")


def check_strategies(names: Sequence[str]) -> tuple[str, ...]:
  """The strategy names, each checked against the registry."""
  return check_names(names, STRATEGIES, "refinement strategy")


def run_strategy(name: str, ctx: Context, prompts: Sequence[str], cfg: StrategyConfig,
                 seed: int) -> list[Refined]:
  """Runs strategy `name` on `prompts` (ctx.problems, when set, align with them)."""
  check_strategies([name])
  ctx.prompts = list(prompts)
  return STRATEGIES[name](ctx, list(prompts), cfg, seed)


def refine_texts(loaded, prompts: Sequence[str], name: str, cfg: StrategyConfig,
                 seed: int = 0, sampler=None) -> list[Refined]:
  """Strategy `name` on free-text prompts with a `weights.LoadedModel` (no task: best_of_n
  'auto' lets the model judge its own candidates; answers are extracted generically)."""
  from selfimprove_jax.sampling import make_sampler
  generate = model_generate(sampler or make_sampler(loaded), loaded.params, loaded.tokenizer)
  return run_strategy(name, Context(generate, judge=generate), prompts, cfg, seed)


def metric_name(name: str, cfg: StrategyConfig) -> str:
  return f"{name}@{cfg.rounds if name in REVISING else cfg.n}"


def heldout_metrics(ctx: Context, names: Sequence[str], cfg: StrategyConfig,
                    seed: int) -> dict:
  """Held-out score of each strategy (fraction of problems whose final answer the
  verifier accepts); self_consistency also reports its mean vote share."""
  per = heldout_results(ctx, names, cfg, seed)
  return heldout_summary([{key: rows[i] for key, rows in per.items()}
                          for i in range(len(ctx.problems))])


def heldout_results(ctx: Context, names: Sequence[str], cfg: StrategyConfig,
                    seed: int) -> dict[str, list[dict]]:
  """Per strategy (keyed by its metric name, e.g. best_of_n@8), one result per held-out
  problem: the final answer's text and reward, self_consistency's vote share, a
  revising strategy's whether it revised."""
  prompts = [p.prompt for p in ctx.problems]
  out = {}
  for k, name in enumerate(check_strategies(names)):
    results = run_strategy(name, ctx, prompts, cfg, seed + 100 * k)
    verdicts = verify(ctx.task, ctx.problems, [r.text for r in results])
    rows = [{"completion": r.text, "reward": v.reward} for r, v in zip(results, verdicts)]
    for row, r in zip(rows, results):
      if name == "self_consistency":
        row["vote_share"] = r.info["vote_share"]
      if name in REVISING:
        row["revised"] = r.info["revised"]
    out[metric_name(name, cfg)] = rows
  return out


def heldout_summary(per_problem: Sequence[dict]) -> dict:
  """The strategies' held-out metrics from per-problem results ({metric name: result}
  per problem, as `heldout_results` gives them)."""
  metrics = {}
  for key in (per_problem[0] if per_problem else {}):
    rows = [p[key] for p in per_problem]
    metrics[key] = float(np.mean([r["reward"] >= 1.0 for r in rows]))
    if "vote_share" in rows[0]:
      metrics[f"{key}_vote_share"] = float(np.mean([r["vote_share"] for r in rows]))
    if "revised" in rows[0]:
      metrics[f"{key}_revised"] = float(np.mean([r["revised"] for r in rows]))
  return metrics
