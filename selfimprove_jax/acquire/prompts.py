"""The training prompt stream of a run: a Grain dataset of the task's problems, with
the model's own proposals (self-instruct) mixed in."""

from __future__ import annotations

from typing import Optional

import grain

from selfimprove_jax.tasks.problem import Problem


class PromptStream:
  """The training prompts: a Grain dataset of the task's problems (index -> problem at
  the iteration's difficulty), iterated from the position the loop state saved; its
  iterator state after the iteration goes back into the loop state.

  Every process reads the whole stream: sampling is one SPMD program over the global
  batch, so every host needs every prompt, and the saved position then means the same
  thing for any process count (a run resumes on more or fewer hosts)."""

  def __init__(self, task, seed: int, saved: Optional[dict], difficulty):
    ds = grain.MapDataset.range(0, 1 << 31).map(
        lambda i: task.problem(seed, int(i), difficulty))
    # read in this thread, nothing ahead: drawing a problem is Python (threads gain
    # nothing under the GIL), and the default prefetch drew 500 problems past the
    # iteration's and polled its whole buffer at every element (arithmetic: 300 us of
    # CPU a prompt, 67 us without; benchmarks/host_overhead.py). The iterator state is
    # the same {"next_index": n}.
    self._it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                         prefetch_buffer_size=0)))
    if saved:
      self._it.set_state(saved)
    self._proposals: list[Problem] = []

  def add_proposals(self, problems: list[Problem]) -> None:
    """Problems the model proposed (self-instruct), mixed in by `take`."""
    self._proposals += problems

  def take(self, n: int, proposal_share: float = 0.0) -> list[Problem]:
    """n problems: the stream's, with up to `proposal_share` of them the proposals'."""
    m = min(len(self._proposals), round(proposal_share * n))
    problems = [next(self._it) for _ in range(n - m)] + self._proposals[:m]
    self._proposals = self._proposals[m:]
    return problems

  def state(self) -> dict:
    return self._it.get_state()
