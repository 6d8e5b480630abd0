"""The one record type of the loop: `Sample`, a sampled completion of a prompt, from
the sampler's output through every stage to the files under records/ and back.

Every field a stage reads or writes is declared here; the optional ones are None until
the stage that owns them sets them (the judge, a refinement strategy, a verifier that
could not finish). On disk a stage's records are a Parquet file with one column per
field (ids and log-probs binary, text readable; see "files" below), or, as exported
and as runs before Parquet wrote them, one JSON object per line with the same field
names, unset optional fields left out. A file written before a field existed still
loads, and a file with a field this code does not know is refused with one line.

Also here, because several stages need them and none owns them: `group_by_problem`,
`majority` (the vote of self-consistency, maj@k and label-free targets), `pseudo_label`
and `agreement_rewards` (label-free rewards and targets: a clear majority or nothing),
`pass_rate`, and the text normalisation behind de-duplication and novelty checks.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
import re
from typing import Iterable, Optional, Sequence

from selfimprove_jax.runtime.files import open_regular, write_atomic


@dataclasses.dataclass
class Sample:
  """One completion of one prompt, and what the stages learned about it."""
  problem_id: str = ""                 # '' for free-text prompts (no task problem)
  prompt: str = ""
  reference: Optional[str] = None      # the problem's reference answer, where it has one
  prompt_tokens: list = dataclasses.field(default_factory=list)
  completion: str = ""                 # decoded text (special tokens dropped)
  completion_tokens: list = dataclasses.field(default_factory=list)   # incl. EOS if it ended so
  logprobs: list = dataclasses.field(default_factory=list)   # raw log-probs of completion_tokens
  reward: float = 0.0                  # in [0, 1]; the verifier's unless a judge replaced it
  finish_reason: str = "eos"           # 'eos' | 'stop' | 'length'
  num_tokens: int = 1                  # completion length (tokens)
  sample_index: int = 0                # j of the G samples of its prompt
  iteration: int = -1                  # loop iteration that sampled it (-1: evaluation)
  verifier_status: str = "ok"          # or why the verifier could not finish ('timeout', ...)
  verifier_detail: str = ""            # what failed, in words
  # set by the judge (select/judge.py): score None = unparsed reply; judged iff judge_reply is set
  judge_score: Optional[float] = None
  judge_reply: Optional[str] = None
  verifier_reward: Optional[float] = None   # the verifier's reward when a judge's replaced it
  # set by a refinement strategy's training targets (refine_targets.refine_records)
  refined: Optional[bool] = None       # True: a training target the 'refined' filter keeps
  vote_share: Optional[float] = None   # self_consistency: its prompt's majority share
  majority_answer: Optional[str] = None   # self_consistency: its prompt's majority answer
                                          # (the label of label-free training)
  refine_rounds: Optional[int] = None  # revising strategies: rounds behind this revision
  # set by STaR's rationalization (refine_targets.rationalize_records): True = an answer given
  # with the reference as a hint, recorded under the original prompt (hint removed)
  rationalized: Optional[bool] = None
  # set by paradigms that make their own samples (paradigms/): which role a sample
  # plays -- self_play: 'proposer' | 'solver'; spin: 'target' | 'opponent'
  role: Optional[str] = None
  # self_play proposer samples: the cleaned proposal, its verdict ('valid' or why not:
  # 'empty', 'duplicate', 'copy', 'heldout_leak', 'invalid', 'too_hard'; programs: how
  # the sandbox run ended, 'nondeterministic', 'too_long') and, when
  # valid, the problem id its solver samples carry; on both roles the solver's pass
  # rate p on that proposal
  proposal: Optional[str] = None
  proposal_status: Optional[str] = None
  proposal_id: Optional[str] = None
  solver_pass_rate: Optional[float] = None
  # label-free rewards (ttrl): the answer read from this completion and its group's
  # pseudo-label (the majority answer; None when no answer reached the vote share)
  answer: Optional[str] = None
  pseudo_label: Optional[str] = None
  # multi-turn episodes (environments/episodes.py): the completion is the whole episode
  # after its first observation, the model's turns and the environment's answers as
  # sampled and appended (never re-tokenized); `action_mask` is 1 at the model's tokens,
  # the only ones a loss reads, and 0 at the observations' (whose log-probs are 0);
  # `turns` holds one dict per model turn (environments.episodes.TURN_FIELDS); the
  # reward is the last step's; `episode_end` says why the episode ended ('done',
  # 'max_turns', 'max_tokens', 'error')
  action_mask: Optional[list] = None
  turns: Optional[list] = None
  episode_end: Optional[str] = None

  @property
  def logprob(self) -> float:
    """Summed log-prob of the completion (a sequence score for ranking and ties)."""
    return float(sum(self.logprobs))

  @property
  def mean_logprob(self) -> float:
    return self.logprob / max(1, self.num_tokens)

  @property
  def judged(self) -> bool:
    return self.judge_reply is not None

  def replace(self, **changes) -> "Sample":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    return {k: v for k, v in out.items() if not (k in _OPTIONAL and v is None)}

  @classmethod
  def from_json(cls, row: dict) -> "Sample":
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
      raise ValueError(f"unknown record field {unknown[0]!r} (written by another version "
                       f"of selfimprove_jax?)")
    return cls(**row)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Sample))
# every field whose default is None is left out of JSON while unset; `reference` is
# the exception, written as null (records predating the optional fields have it)
_OPTIONAL = frozenset(f.name for f in dataclasses.fields(Sample)
                      if f.default is None and f.name != "reference")


def group_by_problem(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
  """problem_id -> its samples, both in first-seen order."""
  out: dict[str, list[Sample]] = collections.defaultdict(list)
  for s in samples:
    out[s.problem_id].append(s)
  return dict(out)


def pass_rate(samples: Sequence[Sample], threshold: float) -> float:
  return sum(s.reward >= threshold for s in samples) / max(1, len(samples))


def majority(answers: Sequence[Optional[str]], scores: Optional[Sequence[float]] = None):
  """Most common non-empty answer; ties broken by the higher summed score (e.g. the
  log-prob), then by first appearance. Returns (answer or None, vote share)."""
  counts: dict[str, int] = collections.Counter(a for a in answers if a)
  if not counts:
    return None, 0.0
  total: dict[str, float] = collections.defaultdict(float)
  for i, a in enumerate(answers):
    if a and scores is not None:
      total[a] += scores[i]
  order = {a: i for i, a in reversed(list(enumerate(answers))) if a}
  best = max(counts, key=lambda a: (counts[a], total[a], -order[a]))
  return best, counts[best] / len(answers)


def pseudo_label(answers: Sequence[Optional[str]], min_share: float):
  """A group's label-free target (TTRL, Zuo et al. 2025; the self-consistency labels
  of Huang et al. 2022): its majority answer when that answer holds at least
  `min_share` of all the group's votes (None votes count, for nothing) and no other
  answer has as many. A tie or a thin majority gives no label: such majorities are
  often spurious, and rewarding them teaches a guess. Returns (label or None, share)."""
  counts = collections.Counter(a for a in answers if a)
  if not counts:
    return None, 0.0
  (best, top), *rest = counts.most_common()
  share = top / len(answers)
  if (rest and rest[0][1] == top) or share < min_share:
    return None, share
  return best, share


def agreement_rewards(answers: Sequence[Optional[str]], label: Optional[str]) -> list[float]:
  """1.0 for each answer equal to the group's pseudo-label, else 0.0 (all 0 without one)."""
  return [float(label is not None and a == label) for a in answers]


# ----------------------------------------------------------------------------- text overlap


def normalise(text: str) -> str:
  """Lower case, whitespace runs collapsed: what 'the same text' means for de-duplication."""
  return re.sub(r"\s+", " ", text.strip().lower())


def ngrams(text: str, n: int) -> set:
  words = normalise(text).split(" ")
  if len(words) < n:
    return {tuple(words)}
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
  return len(a & b) / max(1, len(a | b))


# ----------------------------------------------------------------------------- files
#
# A stage's Samples are one Parquet file (`.parquet`); plain rows (held-out results,
# optimizer steps, proposals) and the export of Samples are JSON Lines (`.jsonl`).
# `read_records` reads both, so the JSONL records of runs written before Parquet load.
#
# Why Parquet: JSONL spent about 16 bytes a token (ids and log-probs as decimal text,
# the prompt's ids again in every sample). Here ids are an int32 column and log-probs
# a float32 one (the sampler's dtype, so reading back is bit-exact; a file holding any
# log-prob that float32 cannot hold keeps float64), a problem's prompt ids are stored
# once (null `prompt_tokens`: the row above's, since a problem's samples sit together),
# pages are zstd-compressed, and every text field stays a readable string column
# (benchmarks/RESULTS.md, "Records on disk"). The bytes are a function of the samples
# (Parquet writes no timestamp), so a stage's hash in stages.json means what it did.

_FORMAT = (b"selfimprove_jax.records", b"1")   # the file's key-value metadata
# element types of the list fields; a list field missing here fails at the first write
_LISTS = {"prompt_tokens": "int32", "completion_tokens": "int32", "logprobs": "float32",
          "action_mask": "int8"}
_JSON_TEXT = frozenset({"turns"})   # dicts per row: one JSON text each


def write_records(path: str, samples: Iterable[Sample]) -> str:
  """Writes samples atomically, as Parquet or, for a `.jsonl` path, as JSON Lines;
  returns the file's SHA-256 (files.hash_path)."""
  if path.endswith(".jsonl"):
    return write_jsonl(path, (s.to_json() for s in samples))
  return _write_bytes(path, encode_records(list(samples)))


def records_digest(path: str, samples: Iterable[Sample]) -> str:
  """The hash `write_records(path, samples)` returns, without writing."""
  if path.endswith(".jsonl"):
    return jsonl_digest(path, (s.to_json() for s in samples))
  return bytes_digest(path, encode_records(list(samples)))


def read_records(path: str) -> list[Sample]:
  """The samples of a records file (.parquet, or .jsonl); one that is not a records
  file raises ValueError naming it."""
  with open_regular(path) as f:
    return parse_records(f.read(), path)


def parse_records(data: bytes, path: str) -> list[Sample]:
  """The samples in `data`, the bytes of the records file `path` (its extension
  says the format)."""
  if not path.endswith(".jsonl"):
    return decode_records(data, path)
  try:
    return [Sample.from_json(row) for row in parse_jsonl(data, path)]
  except TypeError as e:
    raise ValueError(f"{path}: {e}") from None


def bytes_digest(path: str, data: bytes) -> str:
  """The SHA-256 `files.hash_path` gives a file named like `path` holding `data`."""
  h = hashlib.sha256(os.path.basename(path).encode())
  h.update(data)
  return h.hexdigest()


def encode_records(samples: Sequence[Sample]) -> bytes:
  """The Parquet file of `samples`: the same samples give the same bytes."""
  import pyarrow as pa   # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq   # pylint: disable=import-outside-toplevel
  columns = {}
  for name, kind in _column_kinds().items():
    values = [getattr(s, name) for s in samples]
    if name == "prompt_tokens":
      values = [None if i and v == values[i - 1] else v for i, v in enumerate(values)]
    if name in _JSON_TEXT:
      values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
    try:
      columns[name] = (_list_array(values, _LISTS[name]) if kind == "list"
                       else pa.array(values, getattr(pa, kind)()))
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
      raise ValueError(f"record field {name!r}: {e}") from None
  table = pa.table(columns).replace_schema_metadata(dict([_FORMAT]))
  # Parquet names a list's values NAME.list.element. Log-probs byte-stream-split (each
  # float's bytes in their own stream) compress 13% better under zstd than plain; ids
  # dictionary-encode (the default; splitting int32 needs pyarrow >= 17 to read)
  leaves = {n: f"{n}.list.element" if kind == "list" else n
            for n, kind in _column_kinds().items()}
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, compression="zstd", write_statistics=False,
                 use_dictionary=[v for n, v in leaves.items() if n != "logprobs"],
                 column_encoding={leaves["logprobs"]: "BYTE_STREAM_SPLIT"})
  return sink.getvalue().to_pybytes()


def decode_records(data: bytes, path: str) -> list[Sample]:
  """The samples of the Parquet file `data` (`encode_records`); ValueError naming
  `path` when it is not one. Fields the file lacks take their defaults."""
  import pyarrow as pa   # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq   # pylint: disable=import-outside-toplevel
  try:
    table = pq.read_table(pa.BufferReader(data))
  except Exception as e:  # pylint: disable=broad-except   # pyarrow's many error types
    raise ValueError(f"{path}: not a readable Parquet file "
                     f"({' '.join(str(e).split())[:160]})") from None
  if (table.schema.metadata or {}).get(_FORMAT[0]) != _FORMAT[1]:
    raise ValueError(f"{path}: not a records file of this version of selfimprove_jax")
  unknown = sorted(set(table.column_names) - _FIELDS)
  if unknown:
    raise ValueError(f"{path}: unknown record field {unknown[0]!r} (written by another "
                     f"version of selfimprove_jax?)")
  columns = {}
  for name in table.column_names:
    column = table.column(name)
    columns[name] = (_list_values(column) if pa.types.is_list(column.type)
                     else column.to_pylist())
  prompts = columns.get("prompt_tokens", [])
  for i, v in enumerate(prompts):   # null: the row above's prompt
    if v is None:
      prompts[i] = list(prompts[i - 1]) if i else []
  for name in _JSON_TEXT & set(columns):
    columns[name] = [None if v is None else json.loads(v) for v in columns[name]]
  return [Sample(**{name: values[i] for name, values in columns.items()})
          for i in range(table.num_rows)]


def _column_kinds() -> dict[str, str]:
  """Field -> 'list' or the pyarrow type of its column, from its declared type."""
  scalars = {"str": "string", "float": "float64", "int": "int64", "bool": "bool_"}
  out = {}
  for f in dataclasses.fields(Sample):
    declared = str(f.type).removeprefix("Optional[").removesuffix("]")
    out[f.name] = ("string" if f.name in _JSON_TEXT else "list" if declared == "list"
                   else scalars[declared])
  return out


def _list_array(values: list, element: str):
  """A Parquet list column (None rows null) of `element` ints, or of float32 when
  every value is one exactly (else float64)."""
  import numpy as np   # pylint: disable=import-outside-toplevel
  import pyarrow as pa   # pylint: disable=import-outside-toplevel
  lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
  flat = itertools.chain.from_iterable(v for v in values if v is not None)
  if element == "float32":
    wide = np.fromiter(flat, np.float64, int(offsets[-1]))
    narrow = wide.astype(np.float32)
    flat = narrow if np.array_equal(narrow.astype(np.float64), wide) else wide
  else:
    wide = np.fromiter(flat, np.int64, int(offsets[-1]))
    info = np.iinfo(element)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
      raise ValueError(f"a value outside {element}")
    flat = wide.astype(element)
  nulls = [v is None for v in values]
  return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat),
                                  mask=pa.array(nulls) if any(nulls) else None)


def _list_values(column) -> list:
  """A list column as Python lists (None where null), through numpy: a few times
  faster than `to_pylist` on millions of tokens."""
  arr = column.combine_chunks()
  offsets = arr.offsets.to_numpy()
  flat = arr.values.to_numpy(zero_copy_only=False).tolist()
  nulls = arr.is_null().to_numpy(zero_copy_only=False)
  return [None if nulls[i] else flat[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def _write_bytes(path: str, data: bytes) -> str:
  """Writes `data` atomically (temporary file, fsync, rename); returns its hash."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_atomic(path, lambda f: f.write(data), "wb")
  return bytes_digest(path, data)


def write_jsonl(path: str, rows: Iterable[dict]) -> str:
  """Writes JSON rows atomically, one per line, and returns the file's SHA-256
  (files.hash_path)."""
  return _write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


def jsonl_digest(path: str, rows: Iterable[dict]) -> str:
  """The hash `write_jsonl(path, rows)` returns, without writing (processes other than
  0 hold the same rows but leave the file to process 0)."""
  h = hashlib.sha256(os.path.basename(path).encode())   # as hash_path hashes one file
  for row in rows:
    h.update((json.dumps(row) + "\n").encode())
  return h.hexdigest()


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file written by `write_jsonl` (regular files only); a line
  that is not a JSON object raises ValueError naming the file and line."""
  with open_regular(path) as f:
    return parse_jsonl(f.read(), path)


def parse_jsonl(data: bytes, path: str) -> list[dict]:
  """The rows of `data`, the bytes of the JSONL file `path` (see `read_jsonl`)."""
  try:
    lines = data.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 ({e})") from None
  out = []
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path} line {n}: {e}") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path} line {n}: not a JSON object")
      out.append(row)
  return out
