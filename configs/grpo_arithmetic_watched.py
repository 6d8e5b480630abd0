"""configs/grpo_arithmetic.py with the watchers acting (evaluate.rules).

Command:   selfimprove-jax run --config configs/grpo_arithmetic_watched.py --workdir runs/grpo_watched
Hardware:  CPU (2 cores) or one GPU.
Runtime:   17.9 min wall on a 2-core CPU (AMD EPYC, shared with the test suite), 2026-12-04.
Result:    validation greedy pass@1 0.06 -> 0.34 -> 0.35, then 0.30 (rolled back); test
           (read by no decision) 0.10 -> 0.31 -> 0.38 (final; 32 up, 4 down, p=2e-6).
           The temperature rule fired after iteration 1 (0.7 -> 0.9). Plain GRPO, same
           seed and machine: final test 0.32. No measurable gain from the rules; see
           benchmarks/EFFICACY.md

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
