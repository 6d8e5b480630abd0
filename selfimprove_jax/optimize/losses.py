"""Losses as plain functions chosen by name: sft, dpo and the policy-gradient family
(grpo, rloo, dr_grpo). Variants are functions (advantage estimators and weightings),
not subclasses.

Batch format (a dict of numpy arrays of fixed shapes, right-padded; B rows, T tokens):
  tokens        [B,T] int32  prompt + completion
  input_mask    [B,T]        1 on real tokens, 0 on right padding
  loss_mask     [B,T]        1 on the completion tokens that are predicted, at the
                             token's own position (token t is predicted from tokens
                             before t; see logprobs.py). Prompt and padding are 0.
  dpo:          rows come in pairs: chosen at even index 2i, rejected at 2i+1 (same
                prompt); ref_logprobs [B,T] from the frozen reference.
  grpo, rloo, dr_grpo:
                rewards [B] float; group_ids [B] int (rows with equal id are
                completions of one prompt; give padding rows an id of their own);
                ref_logprobs [B,T] when kl_coef > 0 (KL is logged whenever present);
                old_logprobs [B,T] from the sampling policy for the PPO ratio
                (omitted: on-policy, ratio 1, plain policy gradient).
All [B,T] log-probs use the alignment of `token_logprobs`.

Normalisation happens once, on the whole (global) batch: `prepare_batch` adds weights
(and advantages) before the batch is split into micro-batches. Every loss and metric
is then a weighted *sum*, so summing over micro-batches gives exactly the value of
the whole batch and gradient accumulation is exact.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from selfimprove_jax.optimize.config import POLICY_GRADIENT_LOSSES

LossFn = Callable  # (logp [B,T], entropy [B,T] | None, batch, cfg) -> (loss, metrics)


def batch_keys(loss: str, kl_coef: float) -> tuple[str, ...]:
  """The keys a batch of `loss` must hold (the format above, the one statement of it);
  old_logprobs stays optional (omitted: ratio 1)."""
  keys = ("tokens", "input_mask", "loss_mask")
  if loss == "dpo":
    keys += ("ref_logprobs",)
  if loss in POLICY_GRADIENT_LOSSES:
    keys += ("rewards", "group_ids") + (("ref_logprobs",) if kl_coef > 0 else ())
  return keys


# ----------------------------------------------------------------------------- weights


def prepare_batch(batch: dict, cfg) -> dict:
  """Adds global-batch weights (and advantages for the policy-gradient losses):
    token_weight [B,T]  loss_mask / completion tokens in the batch (token means)
    row_weight   [B]    1 / rows with any completion token (row means)
    loss_weight  [B,T]  the loss aggregation: 'token' = token_weight; 'sequence' =
                        per-row token mean, then row mean (GRPO paper); dr_grpo:
                        loss_mask / T per row, a constant length normaliser (Dr. GRPO).
    advantages   [B]    grpo family only."""
  out = dict(batch)
  mask = jnp.asarray(batch["loss_mask"]).astype(jnp.float32)
  T = mask.shape[1]
  lengths = mask.sum(axis=1)
  has_tokens = (lengths > 0).astype(jnp.float32)
  out["loss_mask"] = mask
  out["token_weight"] = mask / jnp.maximum(mask.sum(), 1.0)
  out["row_weight"] = has_tokens / jnp.maximum(has_tokens.sum(), 1.0)
  if cfg.loss == "dr_grpo":
    out["loss_weight"] = mask * out["row_weight"][:, None] / T
  elif cfg.aggregation == "sequence":
    out["loss_weight"] = mask * (out["row_weight"] / jnp.maximum(lengths, 1.0))[:, None]
  else:
    out["loss_weight"] = out["token_weight"]
  if cfg.loss in POLICY_GRADIENT_LOSSES:
    out["advantages"] = advantages(batch["rewards"], batch["group_ids"], cfg.loss,
                                   valid=has_tokens, eps=cfg.adv_eps)
  return out


# ----------------------------------------------------------------------------- advantages


def grpo_advantages(rewards, same, n, eps):
  """(r - group mean) / (group std + eps), std with Bessel's correction (as TRL)."""
  mean = jnp.sum(same * rewards[None, :], axis=1) / n
  var = jnp.sum(same * (rewards[None, :] - mean[:, None]) ** 2, axis=1) / jnp.maximum(n - 1, 1)
  return (rewards - mean) / (jnp.sqrt(var) + eps)


def rloo_advantages(rewards, same, n, eps):
  """r_i - mean of the other completions of the group (leave-one-out baseline,
  Ahmadian et al. 2024) = n/(n-1) (r_i - group mean); 0 for a group of one."""
  del eps
  mean = jnp.sum(same * rewards[None, :], axis=1) / n
  return jnp.where(n > 1, (rewards - mean) * n / jnp.maximum(n - 1, 1), 0.0)


def dr_grpo_advantages(rewards, same, n, eps):
  """r - group mean: no std normalisation (Dr. GRPO, Liu et al. 2025)."""
  del eps
  return rewards - jnp.sum(same * rewards[None, :], axis=1) / n


ADVANTAGES = {"grpo": grpo_advantages, "rloo": rloo_advantages, "dr_grpo": dr_grpo_advantages}


def advantages(rewards, groups, name: str, valid=None, eps: float = 1e-4):
  """Per-row advantages [B] from rewards [B] within groups.

  groups: an int G (contiguous groups of G rows) or group ids [B]. valid [B]
  (optional): rows that take part in their group's statistics."""
  rewards = jnp.asarray(rewards, jnp.float32)
  B = rewards.shape[0]
  ids = jnp.arange(B) // groups if isinstance(groups, int) else jnp.asarray(groups)
  same = (ids[:, None] == ids[None, :]).astype(jnp.float32)   # [B,B], B is small
  if valid is not None:
    same = same * jnp.asarray(valid, jnp.float32)[None, :]
  n = jnp.maximum(same.sum(axis=1), 1.0)
  return ADVANTAGES[name](rewards, same, n, eps)


# ----------------------------------------------------------------------------- losses


def sft_loss(logp, entropy, batch, cfg):
  """Next-token cross-entropy on completion tokens (weights from `prepare_batch`)."""
  del entropy, cfg
  return -jnp.sum(logp * batch["loss_weight"]), {}


def dpo_loss(logp, entropy, batch, cfg):
  """Sigmoid DPO (Rafailov et al. 2023) with optional label smoothing (cDPO).
  Implicit reward r = beta (log pi(y|x) - log pi_ref(y|x)); z = r_chosen - r_rejected;
  loss = -(1-ls) log sigmoid(z) - ls log sigmoid(-z), averaged over pairs."""
  del entropy
  m = batch["loss_mask"]
  reward = cfg.dpo_beta * jnp.sum((logp - batch["ref_logprobs"]) * m, axis=1)   # [B]
  chosen, rejected = reward[0::2], reward[1::2]
  z = chosen - rejected
  ls = cfg.dpo_label_smoothing
  pair_loss = -(1 - ls) * jax.nn.log_sigmoid(z) - ls * jax.nn.log_sigmoid(-z)
  w = batch["row_weight"][0::2] + batch["row_weight"][1::2]   # 1 / pairs
  metrics = {"accuracy": jnp.sum((z > 0) * w), "margin": jnp.sum(z * w),
             "chosen_reward": jnp.sum(chosen * w), "rejected_reward": jnp.sum(rejected * w)}
  return jnp.sum(pair_loss * w), metrics


def policy_gradient_loss(logp, entropy, batch, cfg):
  """PPO-clipped policy gradient with a k3 KL penalty (GRPO, Shao et al. 2024):
  per token -min(rho A, clip(rho, 1-eps, 1+eps_high) A) + kl_coef k3, where
  rho = pi / pi_old and k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's unbiased,
  positive KL estimator). grpo, rloo and dr_grpo differ only in the advantages and
  weights `prepare_batch` computed."""
  mask = batch["loss_mask"] > 0
  A = batch["advantages"][:, None]
  old = batch["old_logprobs"] if "old_logprobs" in batch else jax.lax.stop_gradient(logp)
  ratio = jnp.exp(jnp.where(mask, logp - old, 0.0))   # masked first: no inf * 0
  clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps_high)
  per_token = -jnp.minimum(ratio * A, clipped * A)
  tw = batch["token_weight"]
  metrics = {
      "entropy": jnp.sum(entropy * tw),
      "clip_fraction": jnp.sum(((ratio * A) > (clipped * A)) * tw),
      "reward": jnp.sum(jnp.asarray(batch["rewards"], jnp.float32) * batch["row_weight"]),
  }
  if "ref_logprobs" in batch:
    d = jnp.where(mask, batch["ref_logprobs"] - logp, 0.0)
    kl = jnp.exp(d) - d - 1.0
    metrics["kl"] = jnp.sum(kl * tw)
    if cfg.kl_coef > 0:
      per_token = per_token + cfg.kl_coef * kl
  return jnp.sum(per_token * batch["loss_weight"]), metrics


LOSSES: dict[str, LossFn] = {
    "sft": sft_loss,
    "dpo": dpo_loss,
    "grpo": policy_gradient_loss,
    "rloo": policy_gradient_loss,
    "dr_grpo": policy_gradient_loss,
}
