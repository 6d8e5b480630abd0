"""Learning with real signal: the loop raises the tiny model's held-out score.

A random tiny model never answers anything right, so the test first gives it a weak
start (10 SFT steps on 8 training prompts of a trivially learnable JSONL task), exports
it as an HF directory, and hands that to the loop as its model. From there everything
is the loop's own work: sample, keep what the verifier accepts, fine-tune, evaluate on
held-out prompts the pre-training never saw."""

import json
import os

import numpy as np

from selfimprove_jax import optimize as opt
from selfimprove_jax import weights
from selfimprove_jax.config import load_config
from selfimprove_jax.loop import run
from selfimprove_jax.optimize import batches
from selfimprove_jax.runtime.sharding import single_device_mesh
from selfimprove_jax.sampling import encode_prompts
from selfimprove_jax.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weak_start(task, out_dir):
  """The tiny preset after a few SFT steps toward answering '7' and ending its turn
  (p(right) ~ 0.1-0.2 on held-out prompts)."""
  m = weights.load("tiny", seed=0)
  tok = m.tokenizer
  answer = tok.encode("7", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
  rows = [(ids + answer, len(ids)) for ids in
          encode_prompts(tok, [p.prompt for p in task.train_problems(0, 8)])]
  batch = batches.pad_rows(rows, 8, 64)
  cfg = opt.default_optim_config()
  cfg.learning_rate, cfg.schedule = 1e-2, "constant"
  mesh = single_device_mesh()
  state = opt.create_train_state(m.config, cfg, m.params, mesh)
  step = opt.make_train_step(m.config, cfg, mesh)
  # 10 steps: the first few teach the '7' before they teach the end of turn after it,
  # and a reply cut off at its budget states no answer (tasks/answers.py)
  for _ in range(10):
    state, _ = step(state, batch)
  weights.export(state.params, m.config, tok, out_dir)


def test_loop_raises_heldout_score_of_tiny_model(tmp_path):
  path = tmp_path / "seven.jsonl"
  with open(path, "w") as f:
    for i in range(80):
      f.write(json.dumps({"prompt": f"Item {i}: which number comes after six?",
                          "answer": "7"}) + "\n")
  task = get_task(f"jsonl:{path}")
  _weak_start(task, str(tmp_path / "start"))

  config = load_config(os.path.join(ROOT, "configs", "tiny.py"), [
      f"model={tmp_path / 'start'}", f"task.name=jsonl:{path}", "task.heldout_size=8",
      "loop.iterations=2", "loop.prompts_per_iteration=8", "loop.samples_per_prompt=8",
      "select.filters=correct", "sampling.temperature=1.0", "sampling.max_new_tokens=4",
      "evaluate.max_new_tokens=4", "evaluate.maj_k=8", "train.epochs=2",
      "train.batch_size=8", "optim.learning_rate=0.01", "optim.schedule=constant",
      "evaluate.max_regression=1.0", "log.plot=false", "log.tensorboard=false"])
  state = run(config, str(tmp_path / "run"), log=lambda *_: None)
  scores = [h["sampled_reward"] for h in state["history"]]
  kept = [h["kept"] for h in state["history"][1:]]
  print("held-out sampled reward per iteration", scores, "kept", kept)
  assert all(k > 0 for k in kept), kept          # the verifier found right samples
  assert scores[-1] > scores[0] + 0.2, scores     # and training on them generalised
  assert scores[1] > scores[0], scores
  assert np.isfinite(scores).all()
