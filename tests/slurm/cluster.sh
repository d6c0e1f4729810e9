#!/usr/bin/env bash
# tests/slurm/cluster.sh -- a real single-node SLURM cluster on loopback, for
# the parallelaverage test suite and CI.
#
#   bash tests/slurm/cluster.sh up       # install (if missing), start, probe
#   bash tests/slurm/cluster.sh status   # show daemons / node / queue
#   bash tests/slurm/cluster.sh down     # cancel jobs, stop our daemons by PID
#
# Target: Debian 12 (bookworm), run as root, no systemd (a policy-rc.d that
# denies service starts is fine: we start munged/slurmctld/slurmd ourselves).
# Recipe and traps: shared research note "slurm-single-node.md".
#
# Where the config lives: ONLY in "$SLURM_TEST_DIR/slurm.conf". Nothing is
# written to /etc/slurm. Clients find it through SLURM_CONF, which `up` prints
# as `export SLURM_CONF=...` (stdout, so `eval "$(bash cluster.sh up)"` works)
# and writes to "$SLURM_TEST_DIR/env" (source it). Jobs inherit SLURM_CONF from
# the submitter; slurmd additionally sets it in every job's environment (also
# with `sbatch --export=NONE`), so `srun` inside a batch script works too.
# System files touched: /etc/hosts (only if the hostname does not resolve),
# /etc/munge/munge.key (only if missing), /run/munge, /var/{lib,log}/munge.
#
# Env knobs:
#   SLURM_TEST_DIR      work dir: config, state, spool, logs, pid files
#                       (default /tmp/parallelaverage-slurm)
#   SLURM_TEST_CPUS     CPUs advertised for the node (default 8; more than the
#                       real cores on purpose, so 4-8 MPI ranks fit on 2 cores)
#   SLURM_TEST_TIMEOUT  seconds to wait for the node / each probe (default 60)
#   SLURM_TEST_PURGE    1 = `down` also wipes job/node state (fresh job ids)
#
# One cluster per machine: the ports (6817 slurmctld, 6818 slurmd) are fixed.
#
# MPI: launch with `srun --mpi=pmi2` (MpiDefault=none, like most sites: plain
# srun gives N singletons). libpmix-dev is not installed, so --mpi=pmix is
# unavailable and the daemons log harmless "can not load PMIx library" errors.
# Time limits: slurmctld checks them (and --signal=...@T) only every ~30 s, so
# a --time=1 job is killed 60-90 s after start. --signal=SIG@T signals the job
# *steps*; use --signal=B:SIG@T to signal the batch shell itself.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/parallelaverage-slurm}
VCPUS=${SLURM_TEST_CPUS:-8}
TIMEOUT=${SLURM_TEST_TIMEOUT:-60}
NODE=$(hostname -s)
CONF=$DIR/slurm.conf
RUN=$DIR/run
LOGD=$DIR/log
PKGS=(munge slurmctld slurmd slurm-client)

log() { echo "[cluster.sh] $*" >&2; }

# show_logs: tails of every daemon log, for failure reports
show_logs() {
  local f
  for f in /var/log/munge/munged.log "$LOGD"/munged.out "$LOGD"/slurmctld.out \
    "$LOGD/slurmctld.log" "$LOGD"/slurmd.out "$LOGD/slurmd.log"; do
    [ -f "$f" ] || continue
    echo "----- tail -n 25 $f -----" >&2
    tail -n 25 "$f" >&2 || true
  done
}

die() { log "ERROR: $*"; show_logs; exit 1; }

# alive PIDFILE NAME: the pid file names a live process whose comm is NAME
# (checking comm guards against a recycled pid belonging to something else).
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# Trap: MPICH (mpich_shm_<hash(PMI kvsname)>_<node>, mpich_vci_*) and Open MPI
# (sm_segment.*) leak /dev/shm segments when ranks are killed (scancel, abort,
# timeout). With srun --mpi=pmi2 the kvsname is "<jobid>.<stepid>", so a later
# job with a reused id attaches the stale segment and MPI_Init hangs or aborts.
# Remove every such segment that no live process has mapped.
clean_stale_shm() {
  local f
  for f in /dev/shm/mpich_shm_* /dev/shm/mpich_vci_* /dev/shm/sm_segment.*; do
    [ -e "$f" ] || continue
    if ! grep -qsF -- "$f" /proc/[0-9]*/maps; then
      rm -f -- "$f"
    fi
  done
}

# spawn NAME CMD...: run a self-daemonizing daemon with no inherited fds.
# Trap: munged keeps every inherited fd > 2 open for its whole life: our lock
# fd (every later up/down then blocks on it) or any pipe the caller leaked to
# us (whoever reads that pipe never sees EOF). So close every fd > 2, stdin
# from /dev/null, and send the daemon's own stdout/stderr (startup errors
# before its log file is open) to log/NAME.out, never to the caller's pipes.
spawn() {
  local name=$1 f fd
  shift
  (
    for f in "/proc/$BASHPID/fd"/*; do
      fd=${f##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec "$@" </dev/null >>"$LOGD/$name.out" 2>&1
  )
}

munge_ok() {
  local cred
  cred=$(munge -n 2>/dev/null) || return 1
  unmunge <<<"$cred" >/dev/null 2>&1
}

# stop_pids NAME...: SIGTERM every daemon of ours (pid file + matching comm) at
# once -- each Slurm daemon needs ~2 s to exit -- then wait, SIGKILL stragglers.
stop_pids() {
  local name f pid pids=() deadline
  for name in "$@"; do
    f=$RUN/$name.pid
    [ -f "$f" ] || continue
    if alive "$f" "$name"; then
      pid=$(cat "$f")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"   # a stale pid file (dead or recycled pid) is just dropped
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  deadline=$((SECONDS + 20))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still alive after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  done
}

install_packages() {
  local p st missing=()
  for p in "${PKGS[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing: ${missing[*]}"
  # no systemd + policy-rc.d: the postinst scripts cannot start the services,
  # which is what we want (we start them below, with our own config)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

start_munge() {
  if munge_ok; then return 0; fi
  # the munge postinst creates the key; make one if it is missing anyway
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  # Trap: /run is a tmpfs, /run/munge is gone after a reboot; munged needs it.
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  log "starting munged"
  # Trap: munged must run as the munge user ("Logfile is insecure" as root).
  # --force: start even if a stale socket from a killed munged is left over.
  spawn munged runuser -u munge -- /usr/sbin/munged --force || die "munged failed to start"
  local _
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munge does not work (munge -n | unmunge failed)"
  # record the pid: `down` stops munged only if *we* started it
  cp /run/munge/munged.pid "$RUN/munged.pid"
}

# FirstJobId: chosen at random once per work dir (kept in $DIR/first_job_id,
# so the config stays stable across `up`s; `down` with SLURM_TEST_PURGE=1
# drops it together with the state). A wiped state dir then does not
# restart job ids at 1, so ids do not collide with leftovers of an earlier
# cluster (stale /dev/shm segments named after "<jobid>.<step>", job records
# still remembered by a slurmd spool, log/output files named by job id).
first_job_id() {
  local f=$DIR/first_job_id id
  if [ ! -s "$f" ]; then
    id=$(( ((RANDOM << 15) | RANDOM) % 5000000 + 10000 ))
    echo "$id" >"$f"
  fi
  cat "$f"
}

write_conf() {
  local fjid
  fjid=$(first_job_id)
  cat <<EOF
# generated by tests/slurm/cluster.sh -- single node, loopback only
ClusterName=patest
SlurmctldHost=${NODE}(127.0.0.1)
# everything runs as root: no permission juggling on the work dir
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd.pid
SlurmctldLogFile=${LOGD}/slurmctld.log
SlurmdLogFile=${LOGD}/slurmd.log
# silences "Configured MailProg is invalid"
MailProg=/bin/true
# no cgroups: plain process-tree tracking, no task binding (no cgroup.conf)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: sacct does not work; jobcomp/filetxt makes "sacct -c" work
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOGD}/jobcomp.txt
# schedule on every event, no batching delay => jobs start within ~1 s
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
SelectType=select/cons_tres
# CPUs only are consumable: the default per-job memory never blocks jobs
SelectTypeParameters=CR_CPU
# like most sites: no default MPI plugin, callers must pass --mpi=pmi2
MpiDefault=none
# a node that was DOWN (e.g. after a restart) comes back when slurmd registers
ReturnToService=2
# let the node advertise CPUs=${VCPUS} on fewer real cores (else INVAL/DRAIN)
SlurmdParameters=config_overrides
# reject impossible requests at submit time instead of pending forever
EnforcePartLimits=ALL
# bind slurmctld/slurmd/srun to 127.0.0.1, not 0.0.0.0
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MessageTimeout=10
InactiveLimit=0
# time limits: no grace period; SIGTERM->SIGKILL after 5 s. slurmctld checks
# limits every ~30 s, so a 1-minute job ends by ~1.5 min at the latest.
OverTimeLimit=0
KillWait=5
# finished jobs stay visible to squeue/scontrol for 60 s, then are purged
MinJobAge=60
Waittime=0
# random per work dir, see first_job_id() in cluster.sh
FirstJobId=${fjid}
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${VCPUS} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# job_state ID: JobState of a job ("" if unknown)
job_state() {
  local line
  line=$(scontrol show job -o "$1" 2>/dev/null || true)
  [[ $line =~ JobState=([A-Z_]+) ]] && echo "${BASH_REMATCH[1]}"
  return 0
}

wait_node_idle() {
  local st deadline=$((SECONDS + TIMEOUT))
  while :; do
    st=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null || true)
    case "$st" in
      idle | mix | alloc) return 0 ;;
      # a node left DOWN/DRAINED by an earlier run (or a bad config) is resumed
      down* | drain* | drng* | inval*)
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ $SECONDS -lt "$deadline" ] || die "node $NODE not idle after ${TIMEOUT}s (state='$st')"
    sleep 0.2
  done
}

# End-to-end probe: munge -> slurmctld -> slurmd -> slurmstepd -> srun step.
# Polls scontrol instead of `sbatch --wait` (which polls with growing sleeps,
# >= 2 s). Also absorbs the ~3 s before a fresh slurmctld runs its first job.
probe() {
  local out=$LOGD/probe.out id st deadline
  rm -f "$out"
  id=$(sbatch --parsable -J cluster-sh-probe -n 2 -t 1 -o "$out" \
    --wrap 'srun -n 2 hostname') || die "sbatch of the probe job failed"
  deadline=$((SECONDS + TIMEOUT))
  while :; do
    st=$(job_state "$id")
    case "$st" in
      COMPLETED) break ;;
      FAILED | CANCELLED | NODE_FAIL | TIMEOUT | BOOT_FAIL | DEADLINE | OUT_OF_MEMORY | PREEMPTED)
        scontrol show job "$id" >&2 || true
        [ -f "$out" ] && cat "$out" >&2
        die "probe job $id ended in state $st" ;;
    esac
    if [ $SECONDS -ge "$deadline" ]; then
      scontrol show job "$id" >&2 || true
      scancel "$id" 2>/dev/null || true
      die "probe job $id not completed after ${TIMEOUT}s (state='$st')"
    fi
    sleep 0.1
  done
  [ "$(grep -c . "$out")" = 2 ] || { cat "$out" >&2; die "probe job $id: expected 2 lines of srun -n 2 hostname"; }
  # interactive step (srun I/O sockets back to the client on 127.0.0.1)
  timeout "$TIMEOUT" srun -J cluster-sh-probe -n 2 -t 1 hostname >"$out" 2>&1 \
    || { cat "$out" >&2; die "interactive srun -n 2 hostname failed"; }
  [ "$(grep -c . "$out")" = 2 ] || { cat "$out" >&2; die "interactive srun -n 2: expected 2 lines"; }
}

cmd_up() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  install_packages
  # Trap: slurmd matches NodeName to `hostname -s`, and MPICH's hydra proxies
  # connect back to the hostname: it must resolve.
  if ! getent hosts "$NODE" >/dev/null; then
    log "adding '127.0.0.1 $NODE' to /etc/hosts"
    echo "127.0.0.1 $NODE" >>/etc/hosts
  fi
  mkdir -p "$DIR/state" "$DIR/spool" "$LOGD" "$RUN"
  rm -f "$DIR/env"   # rewritten at the end, only if the cluster works
  # readable by unprivileged clients (SLURM_CONF must be readable)
  chmod 0755 "$DIR"
  clean_stale_shm
  start_munge

  local new changed=0
  new=$(write_conf)
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new" ]; then
    printf '%s\n' "$new" >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    changed=1
  fi
  export SLURM_CONF=$CONF

  # a changed config (e.g. SLURM_TEST_CPUS) needs a restart of both daemons
  if [ $changed = 1 ] && { alive "$RUN/slurmctld.pid" slurmctld || alive "$RUN/slurmd.pid" slurmd; }; then
    log "config changed, restarting slurmd and slurmctld"
    stop_pids slurmd slurmctld
  fi
  # Both daemonize and write their pid file (SlurmctldPidFile/SlurmdPidFile).
  if ! alive "$RUN/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    spawn slurmctld slurmctld -f "$CONF" || die "slurmctld failed to start"
  fi
  if ! alive "$RUN/slurmd.pid" slurmd; then
    log "starting slurmd"
    spawn slurmd slurmd -f "$CONF" || die "slurmd failed to start"
  fi

  wait_node_idle
  probe
  log "ready: $(sinfo -h -o '%P %a nodes=%D %t %N cpus=%c') ($(slurmctld -V))"
  printf 'export SLURM_CONF=%q\n' "$CONF" >"$DIR/env"
  cat "$DIR/env"
}

cmd_down() {
  export SLURM_CONF=$CONF
  # Trap: stopping slurmd does not kill running jobs (slurmstepd lives on), so
  # cancel every job of this cluster first and wait until the queue is empty.
  if alive "$RUN/slurmctld.pid" slurmctld; then
    local ids deadline
    ids=$(timeout 20 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      log "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
      # shellcheck disable=SC2086 # word splitting of the id list is intended
      scancel --full $ids 2>/dev/null || true
      deadline=$((SECONDS + 30))
      while [ -n "$(timeout 20 squeue -h -o %A 2>/dev/null || true)" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.2
      done
    fi
  fi
  stop_pids slurmd slurmctld munged
  rm -f "$DIR/env"   # written by a successful `up` only
  clean_stale_shm
  if [ "${SLURM_TEST_PURGE:-0}" = 1 ]; then
    log "purging state and spool"
    rm -rf "${DIR:?}/state" "${DIR:?}/spool" "$DIR/first_job_id"
  fi
  log "down"
}

cmd_status() {
  export SLURM_CONF=$CONF
  local name rc=0
  for name in munged slurmctld slurmd; do
    if alive "$RUN/$name.pid" "$name"; then
      echo "$name: running (pid $(cat "$RUN/$name.pid"))"
    else
      echo "$name: not running (by our pid files)"; rc=1
    fi
  done
  if alive "$RUN/slurmctld.pid" slurmctld; then
    sinfo || rc=1
    squeue || rc=1
  fi
  echo "export SLURM_CONF=$CONF"
  return $rc
}

# Serialise concurrent invocations (e.g. several pytest-xdist workers calling
# `up` at once) on a lock file in the work dir. The daemons must not inherit
# fd 9 (see spawn), or they would hold the lock for their whole life.
lock() {
  mkdir -p "$DIR"
  exec 9>>"$DIR/.lock"
  flock -w 300 9 || { log "could not lock $DIR/.lock within 300 s"; exit 1; }
}

case "${1:-}" in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
