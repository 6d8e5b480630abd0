"""Text in, text out: prompts through a `Sampler`, decoded back.

Text stays text. A prompt, an answer or a completion may spell a chat template's
markers (`<|im_end|>`, `<end_of_turn>`, `</s>`): web text and code do. Encoded with the
tokenizer's defaults such a string becomes the control token itself, a forged turn
boundary. So every text -> ids conversion goes through `encode_text` (special tokens
spelled in the text are encoded as characters) or `encode_prompts`, which renders the
chat template with placeholders for the contents: the template's own structure is
encoded with its control tokens, each content with `encode_text`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import weakref
from typing import Optional, Sequence

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import files
from selfimprove_jax.sampling.params import Completion, SamplingParams
from selfimprove_jax.sampling.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a prompt text becomes the model's input. chat: one user turn of the
  tokenizer's chat template (after a system turn when `system_prompt` is set), with
  `template_kwargs` passed to the template (e.g. enable_thinking=False for Qwen3);
  else raw: `template` with {prompt} replaced, as text (BOS when the tokenizer adds
  one). Every part is inserted literally: nothing in it is evaluated as Jinja."""
  chat: bool = True
  template: str = "{prompt}"
  system_prompt: str = ""
  template_kwargs: tuple = ()   # ((name, value), ...): hashable, like the rest

  def __post_init__(self):
    if self.template.count("{prompt}") != 1:
      raise UserError(f"prompt_template={self.template!r} must contain {{prompt}} exactly once")
    if self.system_prompt and not self.chat:
      raise UserError("system_prompt needs prompt_format='chat' (a raw prompt has no "
                      "turns: put the text in prompt_template)")


# The format travels on (a shallow copy of) the tokenizer, so every caller that holds
# the tokenizer -- the policy, the loop's prompt checks, test doubles -- encodes alike.
_FORMAT_ATTR = "_selfimprove_prompt_format"
# Stands for a message's content while the template is rendered; plain letters, so no
# template filter (trim, capitalisation of roles) or tokenizer special-cases it.
_MARK = "SIJCONTENTMARK{}X"


def with_prompt_format(tokenizer, fmt: PromptFormat):
  """A shallow copy of `tokenizer` whose prompts are encoded in format `fmt`; the
  caller's tokenizer is unchanged. A template that cannot render `fmt` is a
  UserError naming the keys, raised here (before any weights are read)."""
  tok = copy.copy(tokenizer)
  setattr(tok, _FORMAT_ATTR, fmt)
  encode_prompts(tok, ["probe"])
  return tok


def prompt_format_of(tokenizer) -> PromptFormat:
  return getattr(tokenizer, _FORMAT_ATTR, None) or PromptFormat()


def encode_text(tokenizer, text: str) -> list[int]:
  """`text` as ordinary text: a special token's string spelled in it is encoded as its
  characters, never as the control token (no BOS/EOS added either)."""
  if not text:
    return []
  ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
  return [int(t) for t in ids]


# tokenizer -> a regex of its special tokens' strings, longest first (one alternation)
_SPECIALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _special_pattern(tokenizer):
  """The special (control) tokens' strings, longest first, or None when it has none."""
  try:
    return _SPECIALS[tokenizer]
  except (KeyError, TypeError):
    pass
  words = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
                 key=len, reverse=True)
  pattern = re.compile("|".join(map(re.escape, words))) if words else None
  try:
    _SPECIALS[tokenizer] = pattern
  except TypeError:   # not weak-referenceable: recomputed per call
    pass
  return pattern


def _render(tokenizer, fmt: PromptFormat, contents: Sequence[str]) -> str:
  roles = ["system", "user"] if fmt.system_prompt else ["user"]
  messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **dict(fmt.template_kwargs))
  except Exception as e:  # jinja2 errors, raise_exception() in the template, TypeErrors
    raise UserError(f"the tokenizer's chat template fails with system_prompt="
                    f"{fmt.system_prompt!r}, chat_template_kwargs="
                    f"{dict(fmt.template_kwargs)!r}: {type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}") from None


def _chat_ids(tokenizer, fmt: PromptFormat, text: str) -> list[int]:
  """One user turn (after the system turn) with the generation prompt, the template's
  structure as control tokens and each content as text. The content the template
  writes is taken from a render with the real content (so its filters, e.g. Gemma's
  trim, apply) between the placeholder render's surrounding text; when a template
  branches on the content so that the surroundings differ, the content is used as
  given."""
  contents = [fmt.system_prompt, text] if fmt.system_prompt else [text]
  marks = [_MARK.format(i) for i in range(len(contents))]
  skeleton = _render(tokenizer, fmt, marks)
  pieces: list = [skeleton]   # str: template text; int: index of a content
  for i, mark in enumerate(marks):
    pieces = [q for p in pieces for q in (_split(p, mark, i) if isinstance(p, str) else [p])]
  written = []
  for i, (mark, content) in enumerate(zip(marks, contents)):
    before, _, after = skeleton.partition(mark)
    real = _render(tokenizer, fmt, [content if j == i else m for j, m in enumerate(marks)])
    fits = (skeleton.count(mark) == 1 and len(real) >= len(before) + len(after)
            and real.startswith(before) and real.endswith(after))
    written.append(real[len(before):len(real) - len(after)] if fits else content)
  return _encode_pieces(tokenizer, pieces, written)


def _encode_pieces(tokenizer, pieces: Sequence, written: Sequence[str]) -> list[int]:
  """Template text (str pieces) with contents (int pieces: an index into `written`).
  As the tokenizer itself does: cut at the template's control tokens and encode the
  text between them in one piece, contents included, so a content's first token
  merges with the template text before it exactly as in apply_chat_template (only
  the cut points differ: none inside a content)."""
  pattern = _special_pattern(tokenizer)
  ids: list[int] = []
  run = ""
  for p in pieces:
    if isinstance(p, int):
      run += written[p]
      continue
    pos = 0
    for m in (pattern.finditer(p) if pattern is not None else ()):
      ids += encode_text(tokenizer, run + p[pos:m.start()])
      ids.append(int(tokenizer.convert_tokens_to_ids(m.group())))
      run, pos = "", m.end()
    run += p[pos:]
  return ids + encode_text(tokenizer, run)


def encode_reply(tokenizer, text: str, closed: bool) -> list[int]:
  """The ids that follow a model's reply to answer it with `text` as the next user
  turn and prompt the model's next reply: the rest of the template's assistant turn
  (without its end-of-turn token when the reply already ended with it: `closed`), the
  user turn, the generation prompt. Multi-turn episodes append these to the ids they
  sampled, so the history is never re-tokenized. `text` is inserted as text. Without
  a chat template (or with a raw prompt format): the text on lines of its own."""
  fmt = prompt_format_of(tokenizer)
  if not (fmt.chat and getattr(tokenizer, "chat_template", None)):
    return encode_text(tokenizer, "\n" + text + "\n")
  first, reply, answer = (_MARK.format(i) for i in range(3))
  messages = [{"role": "user", "content": first}, {"role": "assistant", "content": reply},
              {"role": "user", "content": answer}]
  if fmt.system_prompt:
    messages.insert(0, {"role": "system", "content": fmt.system_prompt})
  try:
    skeleton = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True,
                                             **dict(fmt.template_kwargs))
  except Exception as e:
    raise UserError(f"the tokenizer's chat template cannot render a multi-turn episode: "
                    f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
  if skeleton.count(reply) != 1 or skeleton.count(answer) != 1:
    raise UserError("the tokenizer's chat template does not write each turn's content "
                    "once; multi-turn episodes need one that does")
  after = skeleton.split(reply, 1)[1]
  eos = getattr(tokenizer, "eos_token", None)
  if closed and eos and after.lstrip(" ").startswith(eos):
    after = after.lstrip(" ")[len(eos):]
  return _encode_pieces(tokenizer, _split(after, answer, 0), [text])


def _split(text: str, mark: str, index: int) -> list:
  parts = text.split(mark)
  out: list = [parts[0]]
  for part in parts[1:]:
    out += [index, part]
  return [p for p in out if p != ""]


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
  """Token ids per prompt in the tokenizer's `PromptFormat` (default: the chat
  template's user turn with the generation prompt appended). Plain text when `chat`
  is False, the format is raw, or the tokenizer has no template. Control tokens come
  only from the template's structure (and a BOS the tokenizer adds to raw text)."""
  fmt = prompt_format_of(tokenizer)
  out = []
  for text in prompts:
    if chat and fmt.chat and getattr(tokenizer, "chat_template", None):
      out.append(_chat_ids(tokenizer, fmt, text))
    else:
      before, after = fmt.template.split("{prompt}")
      ids = tokenizer(before + text + after, split_special_tokens=True)["input_ids"]
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
  skipped; read by `runtime.files.read_jsonl`, as task files are) followed by the
  given ones; a malformed line is a UserError naming it."""
  out: list[str] = []
  if prompts_file:
    record = 'an object with a string "prompt"'
    for lineno, row in files.read_jsonl(prompts_file, "--prompts_file", record):
      if not isinstance(row.get("prompt"), str):
        raise UserError(f"{prompts_file}:{lineno}: expected {record}")
      out.append(row["prompt"])
  out += list(prompts or [])
  if not out:
    raise UserError("no prompts: pass --prompt TEXT or --prompts_file FILE.jsonl")
  return out
