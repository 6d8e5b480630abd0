"""Train state (one pytree) and the optimizer built from the optim config.

AdamW (decoupled weight decay) after global-norm clipping, on a warmup + cosine /
linear / constant learning-rate schedule. Params are fp32 master weights; the model
casts them to its compute dtype inside, so gradients stay fp32; the Adam moments are
fp32 unless optim.moment_dtype stores them in bf16.
The state is created directly in its sharded layout: the optimizer moments take the
sharding of the parameter they belong to.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import abstract_params, param_shardings
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.optimize.config import check_optim_config

# Weight decay applies to the matmul weights only. Norm gains and biases: decaying
# them pulls the scales toward 0 for no regularisation benefit (standard practice
# since GPT-2/BERT). Embeddings: decoupled decay shrinks every row each step, while
# a fine-tuning set only ever sends gradient to the rows of tokens it contains, so
# the rare-token rows of a pretrained model would slowly erode; with tied
# embeddings the same matrix is the output head, so it is excluded as a whole.
DECAYED = frozenset({"q", "k", "v", "o", "gate", "up", "down", "lm_head"})


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes: params, opt_state, step, rng."""
  params: Any
  opt_state: Any
  step: jax.Array   # int32 scalar: optimizer steps taken
  rng: jax.Array    # uint32 [2] raw key (plain array: checkpoints without key types)


def learning_rate_at(cfg, count, horizon) -> jax.Array:
  """The learning rate at optimizer step `count` of a schedule that ends at step
  `horizon`: linear warmup from 0 over warmup_steps, then cosine / linear decay to
  learning_rate * min_lr_ratio at `horizon`, or constant. Traceable in both."""
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  end = lr * cfg.min_lr_ratio
  count = jnp.asarray(count, jnp.float32)
  t = jnp.clip((count - warmup) / jnp.maximum(jnp.asarray(horizon, jnp.float32) - warmup, 1.0),
               0.0, 1.0)
  if cfg.schedule == "cosine":
    after = end + (lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  elif cfg.schedule == "linear":
    after = lr + (end - lr) * t
  else:
    after = jnp.asarray(lr, jnp.float32)
  if warmup == 0:
    return after
  return jnp.where(count < warmup, lr * count / warmup, after)


def learning_rate_schedule(cfg) -> optax.Schedule:
  """`learning_rate_at` with the horizon at cfg.total_steps."""
  return lambda count: learning_rate_at(cfg, count, cfg.total_steps)


class ScheduleState(NamedTuple):
  """The schedule's place: steps taken and the step its decay ends at. The horizon is
  state, not a constant of the compiled step, so the loop can size a fresh
  optimizer's schedule to the steps an iteration will actually take (`with_horizon`)
  without compiling again."""
  count: jax.Array     # int32
  horizon: jax.Array   # int32


def scale_by_horizon_schedule(cfg) -> optax.GradientTransformation:
  """Scales updates by -learning_rate_at(count, horizon) (optax's scale_by_learning_rate
  with the horizon in the state)."""
  def init(params):
    del params
    return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(cfg.total_steps, jnp.int32))

  def update(updates, state, params=None):
    del params
    lr = learning_rate_at(cfg, state.count, state.horizon)
    updates = jax.tree.map(lambda g: (-lr * g).astype(g.dtype), updates)
    return updates, ScheduleState(optax.safe_increment(state.count), state.horizon)
  return optax.GradientTransformation(init, update)


def with_horizon(state: "TrainState", steps: int) -> "TrainState":
  """`state` whose learning-rate schedule ends after `steps` optimizer steps (the new
  value laid out like the old one, so any process count can call it)."""
  old = optax.tree.get(state.opt_state, "horizon")
  value = np.int32(max(1, steps))
  new = jax.make_array_from_callback((), old.sharding, lambda _: value)
  return state.replace(opt_state=optax.tree.set(state.opt_state, horizon=new))


def current_learning_rate(cfg, opt_state) -> jax.Array:
  """The learning rate the next update of `opt_state` will use."""
  [sched] = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ScheduleState))
             if isinstance(x, ScheduleState)]
  return learning_rate_at(cfg, sched.count, sched.horizon)


def decay_mask(params):
  """Pytree of bools like `params`: True where weight decay applies (see DECAYED)."""
  return {k: decay_mask(v) if isinstance(v, dict) else k in DECAYED
          for k, v in params.items()}


def make_optimizer(cfg) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule) with the decay mask; moments stored in
  cfg.moment_dtype."""
  check_optim_config(cfg)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(_adamw(cfg))
  return optax.chain(*parts)


def _adamw(cfg) -> optax.GradientTransformation:
  # optax.adamw's own chain, with the schedule's horizon in the state
  adamw = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                      optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                      scale_by_horizon_schedule(cfg))
  if cfg.moment_dtype != "float32":
    adamw = stored_as(adamw, jnp.dtype(cfg.moment_dtype))
  return adamw


# size: the optimizer state split per array and joined again, around one jitted update
def make_array_update(cfg):
  """`update(params, grads, opt_state, grad_norm) -> (params, opt_state, sums)`:
  `make_optimizer(cfg)`'s update applied one parameter array at a time, each in its
  own compiled call that donates that array and its Adam moments, so the update never
  holds more than one array's intermediates. In one jit, XLA's CPU backend copies
  every donated weight and moment before updating them in place (about the state's
  bytes again); here that copy is one array's.
  Same arithmetic as `tx.update` + `optax.apply_updates` (clipping by the global
  `grad_norm` as optax.clip_by_global_norm does); `sums` = the sums of squares of the
  update, the new and the old params. `params`, `grads` and `opt_state` are consumed."""
  adamw = _adamw(cfg)

  def one(path, slots, p, g, moments, scalars, grad_norm):
    if cfg.grad_clip_norm > 0:
      g = jax.lax.select(grad_norm < cfg.grad_clip_norm, g,
                         (g / grad_norm.astype(g.dtype)) * cfg.grad_clip_norm)
    nest = lambda x: functools.reduce(lambda t, key: {key: t}, reversed(path), x)
    state = slots.unflatten([nest(moments[i]) if i in moments else scalars[i]
                             for i in range(slots.num_leaves)])
    u, new_state = adamw.update(nest(g), state, nest(p))
    [u] = jax.tree.leaves(u)
    new = optax.apply_updates(p, u)
    flat = slots.flatten_up_to(new_state)
    sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
    return (new, {i: jax.tree.leaves(flat[i])[0] for i in moments},
            {i: flat[i] for i in scalars}, jnp.stack([sq(u), sq(new), sq(p)]))

  # slots: the AdamW state's structure down to its moments (params-shaped trees)
  jitted = jax.jit(one, static_argnums=(0, 1), donate_argnums=(2, 4))

  def update(params, grads, opt_state, grad_norm):
    *clip_state, adamw_state = opt_state
    treedef = jax.tree.structure(params)
    is_moments = lambda x: isinstance(x, dict) and jax.tree.structure(x) == treedef
    flat, slots = jax.tree.flatten(adamw_state, is_leaf=is_moments)
    moment_slots = {i: jax.tree.leaves(x) for i, x in enumerate(flat) if is_moments(x)}
    scalars = {i: x for i, x in enumerate(flat) if i not in moment_slots}
    paths = [tuple(k.key for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    p_leaves, g_leaves = jax.tree.leaves(params), jax.tree.leaves(grads)
    del params, grads, opt_state, adamw_state, flat
    new_p, new_moments, sums, new_scalars = [], {i: [] for i in moment_slots}, 0.0, None
    for n, path in enumerate(paths):
      p, g = p_leaves[n], g_leaves[n]
      p_leaves[n] = g_leaves[n] = None   # p is donated, g freed once the call is done
      moments = {i: leaves[n] for i, leaves in moment_slots.items()}
      for leaves in moment_slots.values():
        leaves[n] = None
      p, moments, new_scalars, sq = jitted(path, slots, p, g, moments, scalars, grad_norm)
      new_p.append(p)
      for i, m in moments.items():
        new_moments[i].append(m)
      sums = sums + sq
    joined = [jax.tree.unflatten(treedef, new_moments[i]) if i in new_moments
              else new_scalars[i] for i in range(slots.num_leaves)]
    return (jax.tree.unflatten(treedef, new_p),
            (*clip_state, slots.unflatten(joined)), sums)
  return update


def stored_as(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`inner` with its floating-point state arrays kept in `dtype` between steps and
  widened to fp32 for the update itself (optax's own `mu_dtype` covers only the
  first moment)."""
  def cast(tree, to):
    return jax.tree.map(
        lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim else x,
        tree)

  def init(params):
    return cast(inner.init(params), dtype)

  def update(updates, state, params=None):
    updates, state = inner.update(updates, cast(state, jnp.float32), params)
    return updates, cast(state, dtype)
  return optax.GradientTransformation(init, update)


def _param_path(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(model_config: ModelConfig, cfg, mesh: Mesh,
                    lora: lora_lib.LoraConfig | None = None) -> TrainState:
  """NamedShardings of the whole TrainState: params by the rule table, each Adam
  moment like its parameter, scalars (counts, step, rng) replicated. With `lora` the
  state's params are the adapters only (model/lora.py)."""
  if lora is None:
    p_shard = param_shardings(model_config, mesh)
    shapes = nn.unbox(abstract_params(model_config))
  else:
    p_shard = lora_lib.lora_shardings(model_config, lora, mesh)
    shapes = lora_lib.abstract_lora(model_config, lora)
  by_path = {_param_path(path): s
             for path, s in jax.tree_util.tree_flatten_with_path(p_shard)[0]}
  shape_by_path = {_param_path(path): x.shape
                   for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  opt_shapes = jax.eval_shape(make_optimizer(cfg).init, shapes)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    key = _param_path(path)
    if key in by_path and shape_by_path[key] == leaf.shape:
      return by_path[key]
    return replicated
  opt_shard = jax.tree_util.tree_map_with_path(pick, opt_shapes)
  return TrainState(params=p_shard, opt_state=opt_shard, step=replicated, rng=replicated)


def create_train_state(model_config: ModelConfig, cfg, params, mesh: Mesh,
                       lora: lora_lib.LoraConfig | None = None,
                       donate: bool = False) -> TrainState:
  """A TrainState laid out on `mesh`, created by one jit with out_shardings (the
  optimizer state is never whole on one device). The state gets its own copy of
  `params`, so donating it to the step never invalidates the caller's arrays (the
  loop keeps the start weights as the DPO / KL reference); with `donate` it takes
  over their buffers instead (no second copy; the caller's arrays are then deleted).
  With `lora`, `params` are the adapters (`lora.init_lora`): only they are trained
  and held by Adam."""
  tx = make_optimizer(cfg)
  shardings = state_shardings(model_config, cfg, mesh, lora)

  def init(params):
    params = jax.tree.map(lambda x: jnp.copy(x).astype(jnp.float32), params)
    return TrainState(params=params, opt_state=tx.init(params),
                      step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(cfg.seed)))
  return jax.jit(init, out_shardings=shardings, donate_argnums=(0,) if donate else ())(params)


def abstract_train_state(model_config: ModelConfig, cfg, params, mesh: Mesh,
                         lora: lora_lib.LoraConfig | None = None) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a TrainState, as checkpoints hold it (with
  `lora`: `params` are the adapters)."""
  shapes = jax.eval_shape(
      lambda p: create_train_state(model_config, cfg, p, mesh, lora), params)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings(model_config, cfg, mesh, lora))
