"""The jitted, sharded train step: micro-batch gradient accumulation, clipping,
AdamW update, per-step metrics. The state is donated (updated in place).

The batch (format: see losses.py) is split over the data x fsdp mesh axes; params
and optimizer state follow the rule table (see state.state_shardings). Gradients
of the micro-batches are summed inside one jit by `lax.scan`, so accumulation costs
no extra host round trips and only one micro-batch of activations is live.

The step accepts host numpy batches on one process; with several processes, place
each key with `sharding.put_from_host(x, NamedSharding(mesh, P(("data", "fsdp"))))`.
The batch rows must split evenly over data x fsdp (per micro-batch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import param_shardings
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.optimize.config import POLICY_GRADIENT_LOSSES, check_optim_config
from selfimprove_jax.optimize.logprobs import token_logprobs
from selfimprove_jax.optimize.losses import LOSSES, batch_keys, prepare_batch
from selfimprove_jax.optimize.state import (TrainState, current_learning_rate,
                                            make_array_update, make_optimizer,
                                            state_shardings)

BATCH_AXES = ("data", "fsdp")


def accumulation_steps(cfg, batch_size: int) -> int:
  """Micro-batches per step: batch // micro_batch_size if set, else grad_accum_steps."""
  A = batch_size // cfg.micro_batch_size if cfg.micro_batch_size > 0 else cfg.grad_accum_steps
  unit = 2 if cfg.loss == "dpo" else 1
  if A < 1 or batch_size % (A * unit):
    raise UserError(f"batch of {batch_size} rows does not split into {A} micro-batches"
                    + (" of whole DPO pairs" if unit == 2 else ""))
  return A


def split_micro_batches(batch: dict, A: int, unit: int = 1) -> dict:
  """[B, ...] -> [A, B/A, ...]. Micro-batch a takes every A-th block of `unit` rows
  (unit=2 keeps DPO pairs together), so each micro-batch draws evenly from every
  device's contiguous slice of the batch and the split moves no data."""
  def one(x):
    B = x.shape[0]
    x = x.reshape((B // (A * unit), A, unit) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((A, B // A) + x.shape[3:])
  return jax.tree.map(one, batch)


def _check_batch(batch: dict, cfg) -> None:
  missing = [k for k in batch_keys(cfg.loss, cfg.kl_coef) if k not in batch]
  if missing:
    raise UserError(f"optim.loss={cfg.loss!r} needs batch keys {missing}")


def make_train_step(model_config: ModelConfig, cfg, mesh: Mesh,
                    lora: lora_lib.LoraConfig | None = None):
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and
  the state donated. Metrics are replicated fp32 scalars: loss, grad_norm (before
  clipping), learning_rate (of this update), tokens (real input tokens; divide by
  the step's wall time for tokens/s), loss_tokens, update_norm, param_norm (after the
  update), prev_param_norm (before it), plus the loss's own.

  With `lora` the state holds the adapters and the step is
  `step(state, batch, base_params)`: the frozen base (sharded by the rule table, not
  donated) is merged with the adapters inside the loss, so gradients and optimizer
  updates exist for the adapters only."""
  check_optim_config(cfg)
  tx = make_optimizer(cfg)
  shardings = state_shardings(model_config, cfg, mesh, lora)
  gradients = _make_gradients(model_config, cfg, mesh, lora, shardings.params)
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))   # prefix for every batch key
  replicated = NamedSharding(mesh, P())
  in_shardings = (shardings, batch_sharding) + (
      (param_shardings(model_config, mesh),) if lora is not None else ())
  if cfg.update_per_array:
    return _per_array_step(cfg, jax.jit(
        gradients, in_shardings=in_shardings,
        out_shardings=(shardings.params, replicated, replicated)), lora is not None)
  step = _fused_step(tx, gradients)
  return jax.jit(step if lora is not None else (lambda state, batch: step(state, batch)),
                 in_shardings=in_shardings, out_shardings=(shardings, replicated),
                 donate_argnums=(0,))


def _micro_loss(model_config: ModelConfig, cfg, lora):
  """`micro_loss(params, mb, base) -> (loss, metrics)` of one micro-batch: the loss
  chosen by name on its token log-probs (and entropies, for the policy-gradient
  losses). With `lora`, params are the adapters, merged onto the frozen base."""
  loss_fn = LOSSES[cfg.loss]
  want_entropy = cfg.loss in POLICY_GRADIENT_LOSSES

  def micro_loss(params, mb, base):
    if lora is not None:
      params = lora_lib.merge(jax.lax.stop_gradient(base), params, lora)
    out = token_logprobs(params, model_config, mb["tokens"], mb["input_mask"],
                         cfg.logprob_chunk, return_entropy=want_entropy)
    logp, entropy = out if want_entropy else (out, None)
    return loss_fn(logp, entropy, mb, cfg)
  return micro_loss


def _make_gradients(model_config: ModelConfig, cfg, mesh: Mesh, lora, params_sharding):
  """`gradients(state, batch, base=None) -> (grads, metrics, (step, rng))`, the part
  of the step before the update (jitted alone by `optim.update_per_array`)."""
  micro_loss = _micro_loss(model_config, cfg, lora)
  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  n_batch_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))

  def gradients(state: TrainState, batch: dict, base=None):
    """The summed gradients of the batch, the metrics known before the update, and
    the next (step, rng)."""
    _check_batch(batch, cfg)
    B = batch["tokens"].shape[0]
    A = accumulation_steps(cfg, B)
    if (B // A) % n_batch_shards:
      raise UserError(f"micro-batch of {B // A} rows does not split over the "
                      f"{n_batch_shards} data x fsdp shards of the mesh")
    full = prepare_batch(batch, cfg)
    if A == 1:
      (loss, metrics), grads = grad_fn(state.params, full, base)
    else:
      mbs = split_micro_batches(full, A, 2 if cfg.loss == "dpo" else 1)
      mbs = jax.lax.with_sharding_constraint(mbs, micro_sharding)
      loss, metrics, grads = _accumulate(micro_loss, grad_fn, state.params, mbs, base,
                                         params_sharding)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=current_learning_rate(cfg, state.opt_state),
                   tokens=jnp.sum(jnp.asarray(batch["input_mask"], jnp.float32)),
                   loss_tokens=jnp.sum(full["loss_mask"]))
    rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    return grads, _as_f32(metrics), (state.step + 1, rng)
  return gradients


def _accumulate(micro_loss, grad_fn, params, mbs: dict, base, params_sharding):
  """(loss, metrics, gradients) summed over the micro-batches mbs [A, B/A, ...] by
  one `lax.scan`, so only one micro-batch of activations is live."""
  _, aux_shape = jax.eval_shape(micro_loss, params, jax.tree.map(lambda x: x[0], mbs), base)
  zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)
  grads0 = jax.lax.with_sharding_constraint(zeros(params), params_sharding)

  def body(carry, mb):
    (l, m), g = grad_fn(params, mb, base)
    return jax.tree.map(jnp.add, carry, (l, m, g)), None
  (loss, metrics, grads), _ = jax.lax.scan(
      body, (jnp.zeros((), jnp.float32), zeros(aux_shape), grads0), mbs)
  return loss, metrics, grads


# The loop's guard reads update_norm, param_norm (after) and prev_param_norm
# (before): a non-finite or exploding update (relative to the weights it changed)
# rolls the iteration back; param_norm is also non-finite exactly when some new
# parameter is.
def _fused_step(tx, gradients):
  """`step(state, batch, base=None) -> (state, metrics)`: the gradients, then the
  optimizer's update of every parameter at once, and the norms the guard reads."""
  def step(state: TrainState, batch: dict, base=None):
    grads, metrics, (step_, rng) = gradients(state, batch, base)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(_as_f32(dict(update_norm=optax.tree.norm(updates),
                               param_norm=optax.tree.norm(params),
                               prev_param_norm=optax.tree.norm(state.params))))
    return TrainState(params=params, opt_state=opt_state, step=step_, rng=rng), metrics
  return step


def _as_f32(metrics: dict) -> dict:
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _per_array_step(cfg, gradients, with_base: bool):
  """optim.update_per_array: the step as one jitted gradient pass, then the update
  one parameter array at a time (`state.make_array_update`: no second copy of the
  weights or moments while they are updated). Same signature, results and metrics as
  the fused step; the state is consumed."""
  update = make_array_update(cfg)

  def step(state: TrainState, batch: dict, *base):
    grads, metrics, (step_, rng) = gradients(state, batch, *base)
    params, opt_state, sums = update(state.params, grads, state.opt_state,
                                     metrics["grad_norm"])
    norms = jnp.sqrt(sums)
    metrics.update(update_norm=norms[0], param_norm=norms[1], prev_param_norm=norms[2])
    return TrainState(params=params, opt_state=opt_state, step=step_, rng=rng), metrics
  out = step if with_base else (lambda state, batch: step(state, batch))
  out.gradients = gradients   # the jitted gradient pass (benchmarks/memory.py reads its account)
  return out
