"""Text in, text out: chat-templated prompts through a `Sampler`, decoded back."""

from __future__ import annotations

import json
from typing import Optional, Sequence

from selfimprove_jax.errors import UserError
from selfimprove_jax.sampling.params import Completion, SamplingParams
from selfimprove_jax.sampling.sampler import Sampler


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
  """Token ids per prompt: the tokenizer's chat template with the generation prompt
  appended (one user turn), or plain encoding when `chat` is False or the tokenizer
  has no template."""
  out = []
  for text in prompts:
    if chat and getattr(tokenizer, "chat_template", None):
      ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                          add_generation_prompt=True, tokenize=True)
      if hasattr(ids, "keys"):  # transformers >= 5 returns a BatchEncoding
        ids = ids["input_ids"]
    else:
      ids = tokenizer.encode(text)
    out.append([int(t) for t in ids])
  return out


def eos_ids_for(config, tokenizer) -> tuple[int, ...]:
  """The model config's EOS ids plus the tokenizer's EOS token."""
  ids = config.eos_token_id
  ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
  tok_eos = getattr(tokenizer, "eos_token_id", None)
  if tok_eos is not None and tok_eos not in ids:
    ids.append(int(tok_eos))
  return tuple(ids)


def make_sampler(loaded, **kwargs) -> Sampler:
  """A Sampler for a `weights.LoadedModel` (its config, tokenizer and EOS ids)."""
  kwargs.setdefault("eos_ids", eos_ids_for(loaded.config, loaded.tokenizer))
  kwargs.setdefault("tokenizer", loaded.tokenizer)
  pad = getattr(loaded.tokenizer, "pad_token_id", None)
  kwargs.setdefault("pad_id", 0 if pad is None else int(pad))
  return Sampler(loaded.config, **kwargs)


def generate_text(loaded, prompts: Sequence[str], sp: SamplingParams, n: int = 1,
                  seed: int = 0, sampler: Optional[Sampler] = None, chat: bool = True,
                  progress: bool = False) -> list[Completion]:
  """`n` completions per prompt string, each with `.text` set (without the EOS token
  or matched stop sequence). Pass a `sampler` to reuse its compiled functions."""
  tokenizer = loaded.tokenizer
  sampler = sampler or make_sampler(loaded)
  ids = encode_prompts(tokenizer, prompts, chat=chat)
  completions = sampler.generate(loaded.params, ids, sp, n=n, seed=seed, progress=progress)
  for c in completions:
    c.text = tokenizer.decode(c.content_tokens.tolist(), skip_special_tokens=True)
  return completions


def read_prompts(prompts: Optional[Sequence[str]] = None,
                 prompts_file: Optional[str] = None) -> list[str]:
  """Prompt strings from a JSONL file (one {"prompt": ...} per line, blank lines
  skipped) followed by the given ones; a malformed line is a UserError naming it."""
  out: list[str] = []
  if prompts_file:
    try:
      with open(prompts_file, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
      raise UserError(f"{prompts_file}: not UTF-8 text (byte {e.start}); --prompts_file "
                      f"must be UTF-8 JSONL") from None
    except OSError as e:
      raise UserError(f"{prompts_file}: cannot read prompts file ({e.strerror})") from None
    for i, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{prompts_file}:{i}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise UserError(f'{prompts_file}:{i}: expected an object with a string "prompt"')
      out.append(row["prompt"])
  out += list(prompts or [])
  if not out:
    raise UserError("no prompts: pass --prompt TEXT or --prompts_file FILE.jsonl")
  return out
