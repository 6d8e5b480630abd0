"""Optimisation core: train state and optimizer, losses chosen by name, chunked
token log-probs, and the jitted sharded train step."""

from selfimprove_jax.optimize.config import (LOSS_NAMES, POLICY_GRADIENT_LOSSES,
                                             check_optim_config, default_optim_config)
from selfimprove_jax.model.lora import (LoraConfig, count_lora_params, default_lora_config,
                                           init_lora, merge)
from selfimprove_jax.optimize.logprobs import make_logprob_fn, token_logprobs
from selfimprove_jax.optimize.losses import (ADVANTAGES, LOSSES, advantages, dpo_loss,
                                             policy_gradient_loss, prepare_batch, sft_loss)
from selfimprove_jax.optimize.state import (TrainState, abstract_train_state,
                                            create_train_state, decay_mask,
                                            learning_rate_schedule, make_optimizer,
                                            state_shardings, with_horizon)
from selfimprove_jax.optimize.step import (accumulation_steps, make_train_step,
                                           split_micro_batches)
