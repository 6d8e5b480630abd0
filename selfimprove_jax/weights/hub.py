"""Hugging Face Hub model ids (`Qwen/Qwen2.5-0.5B-Instruct`) found in the local HF cache.

Offline only: the cache is read with `huggingface_hub` (`local_files_only=True`), so a
model that is not there is reported in one line, never downloaded. The runs this
code is for often have no internet (pods, clusters), and a silent multi-GB download
at start-up is not what a researcher who named a model expects.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from selfimprove_jax.errors import UserError

# `org/name` with the Hub's own characters; a leading '.', '/' or '~' is a path, so
# `./runs/x`, `/data/model` and `~/m` are never taken for ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(spec: str) -> bool:
  """True for `org/name` that is not an existing path and not a .gguf file name."""
  return (bool(_HUB_ID.match(spec)) and not os.path.exists(spec)
          and not spec.endswith(".gguf"))


def cache_dir() -> str:
  """The hub cache as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub, else
  huggingface_hub's default). Read at call time, not at import as huggingface_hub's
  constants are, so a variable set after start-up (a test, a notebook) is honoured."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.path.expanduser(os.environ["HF_HUB_CACHE"])
  if os.environ.get("HF_HOME"):
    return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
  from huggingface_hub import constants
  return constants.HF_HUB_CACHE


def snapshot_dir(repo_id: str) -> Optional[str]:
  """The cached snapshot directory of `repo_id` (its `refs/main` revision), or None."""
  from huggingface_hub import snapshot_download
  from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
  try:
    return snapshot_download(repo_id, cache_dir=cache_dir(), local_files_only=True)
  except (LocalEntryNotFoundError, HFValidationError):
    return None


def resolve_hub_id(repo_id: str) -> str:
  """The local snapshot directory of `repo_id`; a UserError in one line when absent."""
  found = snapshot_dir(repo_id)
  if found is None:
    raise UserError(
        f"{repo_id}: no such file or directory, and not in the local Hugging Face cache "
        f"{cache_dir()} (nothing is downloaded: on a machine with internet run "
        f"`hf download {repo_id}` and copy its cache here, or set HF_HUB_CACHE to it)")
  return found
