"""Guess-the-number: SmolLM2-135M-Instruct learns a game with hidden state by expert iteration.

Command:   selfimprove-jax run --config configs/guess_number.py --workdir runs/guess_number
Hardware:  CPU (2 cores); the same config runs on a GPU or TPU unchanged.
Runtime:   not yet measured (target: about 15 min on the 2-core CPU dev machine).
Result:    not yet measured; report pass@1 (solved within 8 guesses) and the process
           measures (turns, invalid_actions, out_of_turns, turns_over_optimal) of the
           validation and test splits.

Each episode is one game (tasks/guess_number.py, environments/guess_number.py): the
model guesses, the game answers higher or lower in a new user turn, for up to 8 guesses.
Each iteration plays 4 episodes of each of 32 games at temperature 0.7 and fine-tunes on
the solved ones, with loss on the model's guesses only (SFT on successful episodes).
N = 20 (difficulty 2, binary search needs 5 guesses at worst), not 100: with its default
system prompt the base model rarely replies with a bare number (greedy: 0 of 32 games
at N = 10, every turn invalid; sampled at N = 20: 1 of 32 episodes solved, 168 of 194
turns invalid), so successes to train on come from chance, and chance shrinks with N.
The system prompt "Be concise." changes that (probe, N = 20, 16 games, max_tokens 320,
shared 2-core AMD EPYC): greedy 5 of 16 solved (counting up from its first guess, as
often as it bisects), sampled at temperature 1.0 2 of 32; hence it, and 0.7.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.system_prompt = "Be concise."      # not SmolLM2's default: bare guesses (above)
  config.task.name = "guess_number"
  config.task.difficulty = 2               # N = 20
  config.task.heldout_size = 32            # validation: one greedy game each
  config.task.test_size = 32               # test: the reported number, read by nothing
  config.task.fresh_size = 0
  config.environment.name = "guess_number"
  config.environment.max_turns = 8          # T: solved within 8 guesses
  # prompt ~70 tokens + 8 x (guess <= 10 + reply ~30): 320 ended 29 of 32 base-model
  # episodes by tokens before their 8th guess (a probe at N = 20)
  config.environment.max_tokens = 384
  config.environment.options.reward = "outcome"
  config.loop.algorithm = "sft"
  config.loop.iterations = 4
  config.loop.prompts_per_iteration = 32
  config.loop.samples_per_prompt = 4
  config.sampling.temperature = 0.7         # varied guesses, fewer rambling ones
  config.sampling.max_new_tokens = 10       # a guess is a few tokens; longer is invalid
  config.sampling.max_batch = 64
  # every turn of a solved episode trains (its wrong guesses too): the replies that
  # followed them are the context of the guesses that came after
  config.select.filters = "correct,dedup"
  config.train.epochs = 2
  config.train.batch_size = 16
  config.train.max_seq_len = 384            # >= environment.max_tokens (prompt included)
  config.optim.learning_rate = 5e-5
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.evaluate.maj_k = 1
  config.evaluate.max_new_tokens = 10
  config.lock()
  return config
