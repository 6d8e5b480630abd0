"""Several processes, one program: `jax.distributed` set-up and the few host-side
collectives the loop needs.

JAX's multi-controller runtime is the engine: every process runs the same Python
program, the mesh spans the devices of all processes, and each jitted call is one
SPMD program over all of them. What stays ours is host-side agreement: a decision
one process makes from files (is a stage's record file on disk and intact? which
checkpoint is the newest good one?) must be the same on every process, or the
processes call different collectives and hang. `broadcast_json` sends process 0's
answer to everyone; `barrier` waits for all.

Call `initialize` before anything touches devices (`jax.devices()`, a jit, an array).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from selfimprove_jax.errors import UserError

# Environment variables read when the flags are not given (JAX itself reads
# JAX_COORDINATOR_ADDRESS but not the other two).
ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_detected() -> Optional[str]:
  """Name of a multi-process launcher JAX detects by itself, or None.

  Slurm (srun with several tasks), Open MPI (mpirun -np N) and Cloud TPU VMs: on
  these `jax.distributed.initialize()` finds the coordinator, process count and id
  with no arguments."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
    return "slurm"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
  if hosts and len(hosts.split(",")) > 1:
    return "cloud_tpu"
  try:   # a TPU VM of a pod slice: JAX asks the GCE metadata server for the workers
    from jax._src import cloud_tpu_init
    if cloud_tpu_init.running_in_cloud_tpu_vm:
      return "cloud_tpu"
  except ImportError:
    pass
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Starts `jax.distributed` when this is one of several processes; returns whether it did.

  Explicit arguments win, then the environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), then automatic detection (Cloud TPU, Slurm,
  Open MPI). One process (num_processes 1, or nothing set and nothing detected) is a
  no-op, so single-machine runs never open a port. Safe to call twice."""
  import jax
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if count is not None and count < 1:
    raise UserError(f"--num_processes must be >= 1, got {count}")
  if count == 1:
    return False
  if count is not None and index is not None and not 0 <= index < count:
    raise UserError(f"--process_id {index} is outside [0, {count})")
  explicit = [v is not None for v in (address, count, index)]
  if all(explicit):
    # CPU processes talk through gloo (the default in recent JAX; set it for older).
    if "jax_cpu_collectives_implementation" in jax.config.values:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index)
    return True
  detected = _cluster_detected()
  if any(explicit) and detected is None:
    raise UserError("several processes need all of --coordinator_address, --num_processes "
                    "and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                    "JAX_PROCESS_ID); got only "
                    + ", ".join(n for n, e in zip(("address", "num_processes", "process_id"),
                                                 explicit) if e))
  if detected is None:
    return False
  jax.distributed.initialize(coordinator_address=address, num_processes=count,
                             process_id=index)
  return jax.process_count() > 1


def process_index() -> int:
  import jax
  return jax.process_index()


def is_primary() -> bool:
  """Process 0: the one that writes logs, records, metrics and manifests."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reached `barrier(name)`; a no-op for one process."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. one of them got SIGTERM)."""
  import jax
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def broadcast_json(obj: Any) -> Any:
  """Process 0's `obj` (anything JSON can hold) on every process; others' is ignored.

  Two collectives: the byte length, then the bytes. One process returns `obj` as is."""
  import jax
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_primary() else None
  n = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
  buf = data if data is not None else np.zeros((n,), np.uint8)
  out = multihost_utils.broadcast_one_to_all(buf)
  return json.loads(np.asarray(out, np.uint8).tobytes().decode())
