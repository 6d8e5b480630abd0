"""configs/grpo_arithmetic.py with the watchers acting (evaluate.rules).

Command:   selfimprove-jax run --config configs/grpo_arithmetic_watched.py --workdir runs/grpo_watched
Hardware:  CPU (2 cores) or one GPU.
Runtime:   not measured yet.
Result:    not measured yet; see benchmarks/EFFICACY.md

The GRPO rows plateau with most groups carrying no advantage (47-78% of them all right or
all wrong) and the entropy per token falling from about 1.5 to 0.35-0.65. Two rules
answer that by sampling more diversely: when more than 60% of groups carry no advantage,
or the mean surprisal of the sampled tokens falls below 0.5, the next iteration's
training temperature rises by 0.2 (from the config's 0.7, at most to 1.1). A third
rolls back an iteration whose training reward rose while validation fell. Validation's
own scoring is not changed by them.
"""

import os

from selfimprove_jax.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "grpo_arithmetic.py"))
  config.evaluate.rules = ("zero_advantage_groups>0.6:temperature+0.2@1.1,"
                           "watch_surprisal<0.5:temperature+0.2@1.1,"
                           "watch_proxy_divergence>=1:rollback")
  return config
