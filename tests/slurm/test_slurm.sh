#!/bin/bash
# test_slurm.sh: launch/slurm/pretrain.sbatch on a real one-node Slurm cluster
# (munged, slurmctld and slurmd started as root under a temporary directory).
#   1. a 4-task job completes: every task saw a consistent rank and size, the
#      dataset service served it and was stopped, metrics.jsonl was written;
#   2. three more jobs are cut off mid-run (scancel --signal=USR1, TERM to the
#      steps, USR1 to the batch shell only); each requeues itself, resumes
#      from its newest checkpoint and ends with weights (and a loss curve)
#      bit-identical to the first, uninterrupted job's.
# Daemons and job processes are stopped and the directory removed afterwards,
# pass or fail. Exits 77 (skipped), saying why, where Slurm cannot run.
# usage: test_slurm.sh --bin DIR --sbatch FILE [--keep]
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin='' sbatch_file='' keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --sbatch) sbatch_file=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 --bin DIR --sbatch FILE [--keep]" >&2; exit 2 ;;
  esac
done
[ -x "$bin/mlmpi-train" ] && [ -x "$bin/mlmpi-data" ] && [ -r "$sbatch_file" ] ||
  { echo "usage: $0 --bin DIR (with mlmpi-train, mlmpi-data) --sbatch FILE" >&2; exit 2; }
bin=$(cd "$bin" && pwd)
sbatch_file=$(cd "$(dirname "$sbatch_file")" && pwd)/$(basename "$sbatch_file")

skip() {
  echo "SKIP: $*"
  exit 77
}
failures=0
check() { # check OK WHAT
  if [ "$1" = 1 ]; then echo "PASS $2"; else echo "FAIL $2"; failures=$((failures + 1)); fi
}

# ---- Can Slurm run here? ----------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "the daemons must start as root (slurmd runs jobs as their users)"
export PATH=$PATH:/usr/sbin
for c in munged mungekey slurmctld slurmd sbatch srun sinfo squeue scontrol scancel bible spm_train; do
  command -v "$c" >/dev/null || skip "$c is missing (Debian packages slurm-wlm, munge, bible-kjv, sentencepiece)"
done
[ -d /sys/fs/cgroup ] || skip "slurmd needs /sys/fs/cgroup mounted"
/usr/bin/python3 -c 'import numpy' 2>/dev/null || skip "/usr/bin/python3 with numpy is missing"

# ---- The cluster's directory, and cleaning up whatever happens ---------------------
# Under /tmp, not $TMPDIR: munge's socket path must stay short.
T=$(mktemp -d /tmp/mlmpi-slurm.XXXXXX) || exit 1
chmod 755 "$T"
export SLURM_CONF=$T/slurm.conf
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/log" "$T/tmpfs"

# Processes of this test's cluster: those whose command line, working
# directory or open files lie in $T (the daemons, slurmstepd, the job's tasks).
our_pids() {
  local p
  for p in $({
    find /proc/[0-9]*/fd -maxdepth 1 -lname "$T/*" 2>/dev/null
    find /proc/[0-9]*/cwd -maxdepth 0 -lname "$T*" 2>/dev/null
    grep -laF -- "$T" /proc/[0-9]*/cmdline 2>/dev/null
  } | cut -d/ -f3 | sort -un); do
    # Not this shell, and not the finders above (gone by now).
    [ "$p" != $$ ] && [ "$p" != "$BASHPID" ] && [ -d "/proc/$p" ] && echo "$p"
  done
}

stop_pidfile() { # stop_pidfile FILE: TERM, then KILL after 10 s
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}

cleanup() {
  local rc=$? ids pids
  trap - EXIT INT TERM
  if [ -f "$T/slurmctld.pid" ]; then
    ids=$(squeue -h -o %i 2>/dev/null)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null
      for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
    fi
  fi
  stop_pidfile "$T/slurmd.pid"
  stop_pidfile "$T/slurmctld.pid"
  stop_pidfile "$T/munge/munged.pid"
  pids=$(our_pids)
  if [ -n "$pids" ]; then
    echo "stopping leftover processes: $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.5
  fi
  if [ "$keep" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  local f
  for f in "$T"/log/*.log "$T"/munge/munged.log; do
    [ -f "$f" ] && { echo "---- tail of $f"; tail -n 25 "$f"; }
  done
}

# ---- munged, slurmctld, slurmd ------------------------------------------------------
mungekey --create --keyfile="$T/munge/munge.key" || skip "mungekey cannot create a key"
chmod 400 "$T/munge/munge.key"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" \
  --seed-file="$T/munge/munged.seed" || { show_logs; skip "munged does not start here"; }

read -r ctld_port slurmd_port < <(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
host=$(hostname -s)
cat >"$SLURM_CONF" <<EOF
ClusterName=mlmpitest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again.
AuthInfo=socket=$T/munge/munge.socket,cred_expire=10
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# pmix keeps per-step directories under TmpFS; a private one avoids clashes.
TmpFS=$T/tmpfs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# config_overrides: the node may claim more CPUs (4) than the machine has.
SlurmdParameters=config_overrides
MpiDefault=pmix
ReturnToService=2
SchedulerType=sched/builtin
# A pending job whose begin time has passed (a requeued one) starts within a second.
SchedulerParameters=sched_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=mlmpi Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
slurmctld -i || { show_logs; skip "slurmctld does not start here"; }
slurmd || { show_logs; skip "slurmd does not start here"; }
state=
for _ in $(seq 300); do
  state=$(sinfo -h -o %T 2>/dev/null)
  [ "$state" = idle ] && break
  sleep 0.1
done
[ "$state" = idle ] || { show_logs; skip "the Slurm node did not become idle (state '$state')"; }
[[ $(srun --mpi=list 2>&1) == *pmix* ]] || skip "Slurm offers no pmix plugin (srun --mpi=list), which Debian's Open MPI needs"
echo "cluster up: $host, ports $ctld_port/$slurmd_port, $T"

# ---- The data: Genesis and Exodus, a SentencePiece model, shards ----------------
bible -f Gen1:1-Exo40:38 | /usr/bin/python3 -c '
import sys
v = [l.split(" ", 1)[1].rstrip("\n") for l in sys.stdin if " " in l]
open(sys.argv[1], "w").write("\n".join(v) + "\n")
with open(sys.argv[2], "w") as f:  # a document per 12 verses
    for i in range(0, len(v), 12):
        f.write("\n".join(v[i:i + 12]) + "\n\n")' "$T/verses.txt" "$T/docs.txt" || exit 1
spm_train --input="$T/verses.txt" --model_prefix="$T/kjv" --vocab_size=1000 \
  '--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]' --minloglevel=2 >/dev/null 2>&1 || exit 1
"$bin/mlmpi-data" shard --tokenizer "$T/kjv.model" --out "$T/shards" --holdout-docs 20 "$T/docs.txt" || exit 1

steps=60
cat >"$T/run.ini" <<EOF
[model]
preset = bert-tiny
[data]
seq_len = 128
max_predictions = 20
[train]
global_batch = 32
steps = $steps
seed = 3
[optim]
lr = 0.004
warmup = 2
[comm]
timeout_s = 60
[ckpt]
every_steps = 20
EOF

# ---- Jobs -------------------------------------------------------------------------
submit() { # submit NAME: the template with 4 tasks on the one node; prints the job id
  MLMPI_CONFIG=$T/run.ini MLMPI_BIN=$bin MLMPI_DATA=$T/shards MLMPI_RUN_DIR=$T/$1 \
    OMPI_MCA_mpi_yield_when_idle=1 \
    sbatch --parsable --chdir="$T" --job-name="$1" --output="$T/$1.out" \
    --nodes=1 --ntasks-per-node=4 --cpus-per-task=1 --time=10 "$sbatch_file"
}
field() { # field JOBID NAME: one field of `scontrol show job -o`
  scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1
}
wait_done() { # wait_done JOBID SECONDS: the final state
  local s
  for _ in $(seq $(($2 * 5))); do
    s=$(field "$1" JobState)
    case $s in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        echo "$s"
        return
        ;;
    esac
    sleep 0.2
  done
  echo "still ${s:-unknown} after $2 s"
}
weights_equal() { # weights_equal A B: every tensor bit-identical
  /usr/bin/python3 - "$1" "$2" "$here/../reference" <<'EOF'
import sys
sys.path.insert(0, sys.argv[3])
import numpy as np
import st_io
a, b = st_io.load(sys.argv[1]), st_io.load(sys.argv[2])
diff = [k for k in a if k not in b or a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
print(f"{len(a)} tensors, {len(diff)} differ" + (f" (first {diff[0]})" if diff else ""))
sys.exit(1 if diff or len(a) != len(b) or not a else 0)
EOF
}
steps_and_losses() { # the metrics.jsonl rows as "step loss"
  /usr/bin/python3 -c '
import json, sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    if "loss" in j: print(j["step"], j["loss"])' "$1" 2>/dev/null
}

# Job 1: uninterrupted.
t0=$SECONDS
id1=$(submit full) || { show_logs; exit 1; }
st1=$(wait_done "$id1" 240)
out1=$T/full.out
check "$([ "$st1" = COMPLETED ] && [ "$(field "$id1" ExitCode)" = 0:0 ] && echo 1)" \
  "job $id1 (4 tasks, $steps steps) ended $st1 in $((SECONDS - t0)) s"
[ "$st1" = COMPLETED ] || { cat "$out1"; show_logs; }

# Every task's view from the preflight step: ranks 0..3 of 4, PMIx's rank the same.
tasks=$(grep -o 'mlmpi-task procid=.*' "$out1" | sort)
ok=1
for r in 0 1 2 3; do
  grep -q "procid=$r ntasks=4 localid=$r pmix_rank=$r .*threads=1 " <<<"$tasks" || ok=0
done
check "$([ "$ok" = 1 ] && [ "$(wc -l <<<"$tasks")" = 4 ] && echo 1)" \
  "the 4 tasks saw ranks 0..3 of 4, Slurm's and PMIx's alike ($(sed -E 's/.*procid=([0-9]+) .*pmix_rank=([0-9a-z]+) .*/\1=\2/' <<<"$tasks" | tr '\n' ' '))"
# MPI's view: one world of 4 ranks (rank 0 says so, once); every rank-tagged
# line comes from the Slurm task of that number; no rank ran alone.
world=$(grep -c '^ *0: \[mlmpi r0 trainer\] 4 rank(s), 4 on this node, 1 thread(s) each' "$out1")
mislabelled=$(grep -E '^ *[0-9]+: \[mlmpi r[0-9]+ ' "$out1" | sed -E 's/^ *([0-9]+): \[mlmpi r([0-9]+) .*/\1 \2/' |
  awk '$1 != $2' | wc -l)
alone=$(grep -cE '^ *[0-9]+: \[mlmpi [a-z]+\]' "$out1")
check "$([ "$world" = 1 ] && [ "$mislabelled" = 0 ] && [ "$alone" = 0 ] && echo 1)" \
  "MPI: one world of 4 ranks ($world start line, $mislabelled rank lines from another task, $alone single-rank lines)"
# The service: listened, was used by the trainers, stopped at the end.
svc_log=$(ls "$T"/full/slurm/service-"$id1"-1.log 2>/dev/null)
port=$(sed -n 's/^listening on tcp:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$svc_log" 2>/dev/null)
used=$(grep -c "^ *0: data.service = 127.0.0.1:$port\$" "$out1")
stopped=$(grep -c 'SIGINT' "$svc_log" 2>/dev/null)
left=0
for p in $(our_pids); do grep -qx mlmpi-data "/proc/$p/comm" 2>/dev/null && left=$((left + 1)); done
check "$([ -n "$port" ] && [ "$used" = 1 ] && [ "$stopped" -ge 1 ] && [ "$left" = 0 ] && echo 1)" \
  "the dataset service listened on port ${port:-?}, served the trainers and was stopped (processes left: $left)"
rows1=$(steps_and_losses "$T/full/log/metrics.jsonl")
check "$([ "$(cut -d' ' -f1 <<<"$rows1" | tr '\n' ' ')" = "$(seq -s' ' 1 $steps) " ] && echo 1)" \
  "metrics.jsonl holds steps 1..$steps ($(wc -l <<<"$rows1") rows)"
check "$([ -f "$T/full/ckpt/step-$steps/model.safetensors" ] && grep -q "training finished: $steps of $steps" "$out1" && echo 1)" \
  "the job reported training finished with weights in ckpt/step-$steps"

# Jobs 2 to 4: cut off after their step-20 checkpoint by a signal (USR1 to the
# steps, as --signal=USR1@120 sends before the time limit; TERM to the steps,
# as a preemption sends; USR1 to the batch shell, as --signal=B:USR1@120
# sends, which the script passes on); each requeues itself, resumes from its
# newest checkpoint and must end where job 1 ended.
cut_job() { # cut_job NAME WHAT SCANCEL-ARGS...
  local name=$1 what=$2 id st out m rows=0 restarts stop_step resumed cmp svc t0=$SECONDS
  shift 2
  id=$(submit "$name") || { show_logs; exit 1; }
  m=$T/$name/log/metrics.jsonl
  out=$T/$name.out
  # Steps take a tenth of a second or more (4096 tokens each): poll the
  # metrics often and ask Slurm for the job's state only now and then, so the
  # signal lands between the step-20 checkpoint and the end.
  for i in $(seq 6000); do
    rows=$({ wc -l <"$m"; } 2>/dev/null || echo 0)
    [ "$rows" -ge 22 ] && break
    if [ $((i % 50)) = 0 ]; then
      case $(field "$id" JobState) in COMPLETED | FAILED | CANCELLED) break ;; esac
    fi
    sleep 0.02
  done
  scancel "$@" "$id"
  echo "job $id: $what after $rows logged steps (scancel $*)"
  st=$(wait_done "$id" 300)
  restarts=$(field "$id" Restarts)
  check "$([ "$st" = COMPLETED ] && [ "$restarts" = 1 ] && echo 1)" \
    "job $id ($what) requeued itself and ended $st after $restarts restart(s) in $((SECONDS - t0)) s"
  stop_step=$(sed -n 's/.*stopping after step \([0-9]*\) on a signal$/\1/p' "$out" | head -n1)
  resumed=$(sed -n "s|.* resuming from $T/$name/ckpt/step-\([0-9]*\) (step .*|\1|p" "$out" | head -n1)
  check "$([ -n "$stop_step" ] && [ "$stop_step" -gt 20 ] && [ "$stop_step" -lt "$steps" ] &&
    [ "$resumed" = "$stop_step" ] && grep -q "requeueing job $id to continue from step $stop_step" "$out" &&
    grep -q "job $id attempt 2:" "$out" && echo 1)" \
    "job $id: the ranks checkpointed at step ${stop_step:-?}; attempt 2 resumed from the newest checkpoint (step ${resumed:-?}), not step 20"
  # The service ignores the signal meant for the trainers (they may still need
  # a batch) and stops when the script tells it to, after them.
  svc=$(grep -ho 'stopping on SIG[A-Z]*' "$T/$name/slurm/service-$id-1.log" 2>/dev/null)
  check "$([ "$svc" = "stopping on SIGINT" ] && echo 1)" \
    "job $id: the dataset service outlived the signal and was stopped by the script (${svc:-no stop line})"
  check "$([ -n "$rows1" ] && [ "$rows1" = "$(steps_and_losses "$m")" ] && echo 1)" \
    "job $id: metrics.jsonl (steps and losses) equals the uninterrupted job's"
  if cmp=$(weights_equal "$T/full/ckpt/step-$steps/model.safetensors" "$T/$name/ckpt/step-$steps/model.safetensors" 2>&1); then
    check 1 "job $id: final weights bit-identical to the uninterrupted job's ($cmp)"
  else
    check 0 "job $id: final weights bit-identical to the uninterrupted job's ($cmp)"
  fi
  if [ "$failures" -gt 0 ]; then
    echo "---- job $id output"
    cat "$out"
  fi
}
cut_job usr1 "USR1 to its steps" --signal=USR1
cut_job term "TERM to its steps" --signal=TERM
cut_job batch "USR1 to its batch shell only" --batch --signal=USR1

if [ "$failures" -gt 0 ]; then
  show_logs
  echo "$failures failed"
  exit 1
fi
echo "all passed"
