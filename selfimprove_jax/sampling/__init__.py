"""The sampler: batched generation with prefill + one jitted decode loop, G samples
per prompt from one shared prefill, per-token log-probs, sharded like the model.

  sp = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=256)
  sampler = Sampler(config, mesh)                       # holds the compiled functions
  completions = sampler.generate(params, prompt_ids, sp, n=8, seed=0)
  texts = generate_text(loaded_model, ["2+2?"], sp, n=4)  # chat template + decode

Rows are scheduled by `Sampler(batching=...)`: "bucketed" decodes chunks of
`max_batch` rows until each chunk's longest row ends; "continuous" keeps `max_batch`
slots busy, handing a finished row's slot to the next waiting sample; "auto" (the
default) picks continuous when rows outnumber slots and can end early.

Stop sequences are matched on token ids: a text stop sequence is encoded on its own
(no special tokens) and a completion stops when its generated ids end with exactly
those ids; the same text produced through a different tokenisation is not caught.
"""

from selfimprove_jax.sampling.decode import CHOOSERS, Choice, DecodeState, make_choice
from selfimprove_jax.sampling.params import (FINISH_REASONS, Completion, Feed, Request,
                                             SamplingParams)
from selfimprove_jax.sampling.sampler import BATCHING, Sampler, bucket_length
from selfimprove_jax.sampling.text import (PromptFormat, encode_prompts, encode_reply,
                                           encode_text, eos_ids_for, generate_text,
                                           make_sampler, prompt_format_of, read_prompts,
                                           with_prompt_format)
