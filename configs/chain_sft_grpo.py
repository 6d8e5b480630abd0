"""A chain: the quickstart's expert iteration, then GRPO from the weights it kept.

Command:   selfimprove-jax run --config configs/chain_sft_grpo.py --workdir runs/chain_sft_grpo
           (phase 1 runs in runs/chain_sft_grpo/parent, phase 2 in runs/chain_sft_grpo;
           re-running the command resumes whichever phase was interrupted)
Hardware:  CPU (2 cores) or one GPU.
Runtime:   not yet measured.
Result:    not yet measured. Phase 1 is configs/quickstart.py unchanged, phase 2
           configs/grpo_arithmetic.py from phase 1's last accepted weights; both carve
           the same validation and test problems (same task and split sizes), so phase
           2's baseline is phase 1's result and its rows compare with phase 1's.
GRPO from scratch has few groups with a signal (0.06 pass@1); from the expert-iteration
model (about half right) most groups are mixed, which is where GRPO's group-relative
advantage has something to rank (issue 28).
"""

import os

from selfimprove_jax.config import load_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  config = load_config(os.path.join(HERE, "grpo_arithmetic.py"))
  config.model = "parent"                          # phase 1's kept weights
  config.parent.config = os.path.join(HERE, "quickstart.py")
  config.parent.overrides = ()                     # e.g. ("loop.iterations=2",)
  config.lock()
  return config
