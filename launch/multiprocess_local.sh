#!/usr/bin/env bash
# N processes of one `selfimprove-jax run` on this machine, joined by jax.distributed
# over localhost, each with its own fake CPU devices: a multi-host run without hosts,
# for testing. Takes the same arguments as `selfimprove-jax run`.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/multiprocess_local.sh \
#       --config configs/tiny.py --workdir runs/tiny_mp
#
# Environment: NUM_PROCESSES (default 2), DEVICES_PER_PROCESS (CPU devices each,
# default 4), PORT (coordinator port, default a free one), PYTHON (default .venv's or
# python3), LOG_DIR (per-process logs, default <workdir>.logs: beside the workdir, since
# `run` refuses a new workdir that already holds files).
# Process 0's output goes to the terminal (only it prints); every process also logs to
# LOG_DIR/process_<i>.log. If one process fails, the others are stopped. Re-running the
# same command resumes, as with one process. A pod has no such parent: there each
# process stops by itself when a peer is lost (exit 69 after --lost_process_timeout
# seconds without its heartbeat; see the README's multi-host section).
set -euo pipefail   # needs bash >= 5.1 (wait -n -p)

cd "$(dirname "$0")/.."
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PORT="${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"

workdir=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --workdir) workdir="${args[i+1]:-}" ;;
    --workdir=*) workdir="${args[i]#--workdir=}" ;;
  esac
done
if [[ -z "$workdir" ]]; then
  echo "usage: $0 --config CONFIG --workdir DIR [run flags...]" >&2
  exit 2
fi
LOG_DIR="${LOG_DIR:-${workdir%/}.logs}"
mkdir -p "$LOG_DIR"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
export HF_HUB_OFFLINE=1

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM

echo "starting $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices, coordinator localhost:$PORT, logs in $LOG_DIR"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  "$PYTHON" -m selfimprove_jax.cli run "$@" --coordinator_address "localhost:$PORT" \
      --num_processes "$NUM_PROCESSES" --process_id "$i" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f --pid="${pids[0]}" "$LOG_DIR/process_0.log" &

# The first failure stops the rest: the others would wait in a collective until JAX's
# heartbeat timeout.
status=0
live=("${pids[@]}")
while ((${#live[@]})); do
  code=0
  wait -n -p done "${live[@]}" || code=$?
  rest=()
  for pid in "${live[@]}"; do [[ "$pid" != "$done" ]] && rest+=("$pid"); done
  live=("${rest[@]}")
  # 75: stopped by a signal at a stage boundary (the others got it too and stop at the
  # same boundary; a second signal would make them exit at once)
  if ((code == 75 && status == 0)); then
    status=75
  elif ((code != 0 && (status == 0 || status == 75))); then
    status=$code
    for ((i = 0; i < ${#pids[@]}; i++)); do [[ "${pids[i]}" == "$done" ]] && break; done
    how="exited with $code"
    ((code > 128)) && how="was killed by signal $((code - 128))"
    echo "process $i of $NUM_PROCESSES $how (logs: $LOG_DIR); stopping the others" >&2
    stop_all
  fi
done
wait
exit "$status"
