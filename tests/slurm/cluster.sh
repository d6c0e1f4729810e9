#!/usr/bin/env bash
# tests/slurm/cluster.sh -- a real SLURM cluster of K nodes on loopback, all on
# this machine, for the parallelaverage test suite and CI.
#
#   bash tests/slurm/cluster.sh up [--nodes K]  # install (if missing), start, probe
#   bash tests/slurm/cluster.sh status          # daemons, nodes, queue
#   bash tests/slurm/cluster.sh down            # cancel jobs, stop our daemons by PID
#
# Target: Debian 12 (bookworm), run as root, no systemd (a policy-rc.d that
# denies service starts is fine: we start every daemon ourselves).
# Recipes and traps: the shared research notes "slurm-single-node.md" and
# "slurm-multi-node.md".
#
# The nodes: K slurmd daemons (Debian's slurmd supports several per host,
# `slurmd -N NAME`), named n1..nK, each with its own port, spool, pid file and
# log, all with NodeHostname=$(hostname -s) and NodeAddr=127.0.0.1. They share
# the machine's CPUs, /tmp and /dev/shm (see tests/slurm/README.md for what that
# does and does not emulate). K=1 is the single-node cluster.
#
# Everything lives in "$SLURM_TEST_DIR": slurm.conf, the Epilog, state, spool,
# logs, pid files and a private munged (its own key and socket, named in
# slurm.conf by AuthInfo=socket=...). Nothing is written to /etc/slurm or
# /etc/munge, and the machine's own munged, if any, is not used, so several
# clusters (different SLURM_TEST_DIR, different ports) can run side by side.
# Clients find a cluster through SLURM_CONF, which `up` prints as
# `export SLURM_CONF=...` (stdout, so `eval "$(bash cluster.sh up)"` works) and
# writes to "$SLURM_TEST_DIR/env" (source it). Jobs inherit SLURM_CONF from the
# submitter; slurmd also sets it in every job's environment (also with
# `sbatch --export=NONE`), so `srun` inside a batch script works too.
# System files touched: /etc/hosts (only if the hostname does not resolve).
#
# Options and env knobs:
#   --nodes K / SLURM_TEST_NODES
#                       number of nodes (slurmd daemons), 1..64 (default 1; CI: 4)
#   SLURM_TEST_DIR      work dir (default /tmp/parallelaverage-slurm)
#   SLURM_TEST_PORT     slurmctld's port; node nI listens on PORT+I (default
#                       6817 for the default work dir, else a port derived from
#                       the work dir's name, in 10000..31900, so that a second
#                       cluster in another dir does not collide with the first)
#   SLURM_TEST_CPUS     CPUs each node advertises (default 8; more than the
#                       real cores on purpose, so 4-8 MPI ranks fit on 2 cores)
#   SLURM_TEST_SLURMD_TIMEOUT
#                       seconds without an answer before slurmctld declares a
#                       node DOWN and ends its jobs NODE_FAIL (default 10;
#                       SLURM's own default is 300)
#   SLURM_TEST_TIMEOUT  seconds to wait for the nodes / each probe (default 60)
#   SLURM_TEST_PURGE    1 = `down` also wipes job/node state (fresh job ids)
#   --accounting / SLURM_TEST_ACCOUNTING=1
#                       also run slurmdbd on a private MariaDB (its data in
#                       $SLURM_TEST_DIR/mysql, on 127.0.0.1 ports PORT+65 and
#                       PORT+66), with AccountingStorageEnforce=associations,limits:
#                       sacct works, and `sacctmgr` limits (MaxSubmitJobs...)
#                       are enforced. Installs slurmdbd and mariadb-server.
#
# A changed config (other K, CPUs, ports, timeout) makes `up` cancel the jobs
# and restart every daemon. `up` again with the same settings only starts what
# is not running (a node whose slurmd was stopped) and probes.
#
# MPI: launch with `srun --mpi=pmi2` (MpiDefault=none, like most sites: plain
# srun gives N singletons). libpmix-dev is not installed, so --mpi=pmix is
# unavailable and the daemons log harmless "can not load PMIx library" errors.
# Time limits: slurmctld checks them (and --signal=...@T) only every ~30 s, so
# a --time=1 job is killed 60-90 s after start. --signal=SIG@T signals the job
# *steps*; use --signal=B:SIG@T to signal the batch shell itself.
set -euo pipefail

DEFAULT_DIR=/tmp/parallelaverage-slurm
DIR=${SLURM_TEST_DIR:-$DEFAULT_DIR}
DIR=${DIR%/}
NODES=${SLURM_TEST_NODES:-1}
VCPUS=${SLURM_TEST_CPUS:-8}
SLURMD_TIMEOUT=${SLURM_TEST_SLURMD_TIMEOUT:-10}
TIMEOUT=${SLURM_TEST_TIMEOUT:-60}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-0}
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
RUN=$DIR/run
LOGD=$DIR/log
MSOCK=$RUN/munge.socket
PKGS=(munge slurmctld slurmd slurm-client)

log() { echo "[cluster.sh] $*" >&2; }

# default_port: 6817 (SLURM's own) for the default dir; for any other dir a
# port from a checksum of its path, so that two clusters never share ports
# unless told to (each cluster takes PORT..PORT+K, K <= 64 < 100).
default_port() {
  if [ "$DIR" = "$DEFAULT_DIR" ]; then
    echo 6817
  else
    local sum
    sum=$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)
    echo $((10000 + (sum % 220) * 100))
  fi
}
PORT=${SLURM_TEST_PORT:-$(default_port)}

nodes() { local i; for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; }

# show_logs: tails of every daemon log, for failure reports
show_logs() {
  local f
  for f in "$LOGD"/*.out "$LOGD"/*.log; do
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
  cred=$(munge -S "$MSOCK" -n 2>/dev/null) || return 1
  unmunge -S "$MSOCK" <<<"$cred" >/dev/null 2>&1
}

# daemons: "pidfile name" of every daemon this work dir may have started: each
# slurmd-<node>.pid (also of nodes beyond the current K: K may have changed),
# slurmd.pid (a single-node cluster of an older cluster.sh), slurmctld, munged.
daemons() {
  local f
  for f in "$RUN"/slurmd-*.pid "$RUN"/slurmd.pid; do
    [ -e "$f" ] && echo "$f slurmd"
  done
  echo "$RUN/slurmctld.pid slurmctld"
  echo "$RUN/slurmdbd.pid slurmdbd"
  echo "$RUN/mariadbd.pid mariadbd"
  echo "$RUN/munged.pid munged"
}

any_alive() {
  local f name
  while read -r f name; do
    if alive "$f" "$name"; then return 0; fi
  done < <(daemons)
  return 1
}

# stop_daemons [NAME...]: SIGTERM every daemon of ours (pid file + matching
# comm; all of them, or those called NAME) at once -- each Slurm daemon needs
# ~2 s to exit -- then wait, SIGKILL stragglers.
stop_daemons() {
  local f name pid pids=() deadline
  while read -r f name; do
    [ $# -eq 0 ] || [[ " $* " == *" $name "* ]] || continue
    [ -f "$f" ] || continue
    if alive "$f" "$name"; then
      pid=$(cat "$f")
      log "stopping $name (pid $pid, $(basename "$f" .pid))"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"   # a stale pid file (dead or recycled pid) is just dropped
  done < <(daemons)
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
  [ "$ACCOUNTING" != 1 ] || PKGS+=(slurmdbd mariadb-server)
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

# A private munged: its own key, socket, pid, log and seed files in $DIR. Run
# as root it is happy with its log file (root-owned); the system munged (which
# must run as the munge user, with /run/munge) is not needed.
start_munge() {
  if alive "$RUN/munged.pid" munged && munge_ok; then return 0; fi
  # a munged of ours that does not answer on our socket (or the system munged an
  # older cluster.sh started and recorded here) is replaced
  stop_daemons munged
  if [ ! -s "$DIR/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge.key.tmp" bs=1024 count=1 status=none
    mv -f "$DIR/munge.key.tmp" "$DIR/munge.key"
  fi
  chmod 0400 "$DIR/munge.key"
  log "starting munged ($MSOCK)"
  # --force: start even if a stale socket from a killed munged is left over
  spawn munged /usr/sbin/munged --force --socket="$MSOCK" --key-file="$DIR/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOGD/munged.log" --seed-file="$DIR/munged.seed" \
    || die "munged failed to start"
  local _
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munge does not work (munge -S $MSOCK -n | unmunge failed)"
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

# The Epilog runs as root on every node of a job once the job has ended there
# (also after scancel, a time limit or a node failure). Trap: MPICH names its
# shared-memory segments /dev/shm/mpich_{shm,vci}_<FNV-1a-32(kvsname)>_<node
# id>, and with srun --mpi=pmi2 the kvsname is "<jobid>.<stepid>"; ranks that
# are killed never unlink them. A job that runs again under the same id (a
# requeue) then attaches the stale segment and hangs or aborts in MPI_Init. So
# remove this job's segments, and only this job's: the machine's /dev/shm also
# holds other jobs' and other users' segments. Deleting them on every node is
# harmless (the job has ended everywhere). Hydra's mpiexec uses random
# kvsnames: its leftovers waste space but never collide.
write_epilog() {
  cat <<'EOF'
#!/bin/bash
# generated by tests/slurm/cluster.sh: remove this job's MPICH /dev/shm segments
shopt -s nullglob
j=${SLURM_JOB_ID:?} files=()
for ((s = 0; s < ${EPILOG_MAX_STEPS:-64}; s++)); do
  k=$j.$s h=2166136261
  for ((i = 0; i < ${#k}; i++)); do
    printf -v c '%d' "'${k:i:1}"
    h=$(( ((h ^ c) * 16777619) & 0xFFFFFFFF ))
  done
  printf -v h '%x' "$h"
  files+=(/dev/shm/mpich_shm_"$h"_* /dev/shm/mpich_vci_"$h"_*)
done
[ ${#files[@]} -eq 0 ] || rm -f -- "${files[@]}"
exit 0
EOF
}

# Accounting (--accounting): slurmdbd on a private MariaDB server, both run as
# root from the work dir. MariaDB listens on 127.0.0.1:DB_PORT only (slurmdbd
# has no socket option; root logs in through the unix socket, slurmdbd as the
# user "slurm" with a password over TCP).
DBD_PORT=$((PORT + 65))
DB_PORT=$((PORT + 66))
DB_SOCK=$RUN/mariadb.sock

start_mariadb() {
  alive "$RUN/mariadbd.pid" mariadbd && return 0
  if [ ! -d "$DIR/mysql/mysql" ]; then
    log "creating the accounting database in $DIR/mysql"
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=socket \
      --skip-test-db >"$LOGD/mariadb-install.out" 2>&1 || die "mariadb-install-db failed"
  fi
  log "starting mariadbd (127.0.0.1:$DB_PORT)"
  # mariadbd stays in the foreground: setsid --fork makes it a daemon (no shell
  # of ours may wait for it, holding the caller's pipes)
  spawn mariadbd setsid --fork /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
    --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$RUN/mariadbd.pid" \
    --log-error="$LOGD/mariadb.log" --innodb-buffer-pool-size=16M || die "mariadbd failed to start"
  local _
  for _ in $(seq 200); do
    mariadb --no-defaults -S "$DB_SOCK" -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  mariadb --no-defaults -S "$DB_SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'patest';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "mariadb does not answer on $DB_SOCK"
}

write_dbd_conf() {
  cat <<EOF
# generated by tests/slurm/cluster.sh --accounting
AuthType=auth/munge
AuthInfo=socket=${MSOCK}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=${DBD_PORT}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${DB_PORT}
StorageUser=slurm
StoragePass=patest
StorageLoc=slurm_acct_db
PidFile=${RUN}/slurmdbd.pid
LogFile=${LOGD}/slurmdbd.log
EOF
}

start_slurmdbd() {
  write_dbd_conf >"$DIR/slurmdbd.conf.tmp"
  chmod 0600 "$DIR/slurmdbd.conf.tmp"
  mv -f "$DIR/slurmdbd.conf.tmp" "$DIR/slurmdbd.conf"
  if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd (port $DBD_PORT)"
    # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF
    spawn slurmdbd slurmdbd || die "slurmdbd failed to start"
  fi
  local _
  for _ in $(seq 100); do
    sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx patest; then
    sacctmgr -i add cluster patest >/dev/null || die "sacctmgr add cluster patest failed"
  fi
}

accounting_conf() {
  if [ "$ACCOUNTING" = 1 ]; then
    cat <<EOF
# slurmdbd on a private MariaDB (cluster.sh --accounting): sacct works, and
# association/QOS limits (sacctmgr ... set MaxSubmitJobs=N) are enforced
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${DBD_PORT}
# the munge socket for slurmdbd connections (AuthInfo covers slurmctld's only)
AccountingStoragePass=${MSOCK}
AccountingStorageEnforce=associations,limits
EOF
  else
    cat <<EOF
# no slurmdbd: sacct does not work; jobcomp/filetxt makes "sacct -c" work
AccountingStorageType=accounting_storage/none
EOF
  fi
}

write_conf() {
  local fjid
  fjid=$(first_job_id)
  cat <<EOF
# generated by tests/slurm/cluster.sh -- ${NODES} node(s) on one host, loopback only
ClusterName=patest
SlurmctldHost=${HOST}(127.0.0.1)
# everything runs as root: no permission juggling on the work dir
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged (clients read this too, through SLURM_CONF)
AuthInfo=socket=${MSOCK}
SlurmctldPort=${PORT}
# unused: each node has its own Port= below
SlurmdPort=$((PORT + 1))
StateSaveLocation=${DIR}/state
# %n = the node's name: one spool, pid file and log per slurmd
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd-%n.pid
SlurmctldLogFile=${LOGD}/slurmctld.log
SlurmdLogFile=${LOGD}/slurmd-%n.log
# removes the job's MPICH /dev/shm segments (see write_epilog in cluster.sh)
Epilog=${DIR}/epilog.sh
# silences "Configured MailProg is invalid"
MailProg=/bin/true
# no cgroups: plain process-tree tracking, no task binding (no cgroup.conf)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$(accounting_conf)
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
# a node that was DOWN (e.g. its slurmd restarted) comes back when it registers
ReturnToService=2
# let each node advertise CPUs=${VCPUS} on fewer real cores (else INVAL/DRAIN)
SlurmdParameters=config_overrides
# reject impossible requests at submit time instead of pending forever
EnforcePartLimits=ALL
# bind slurmctld/slurmd/srun to 127.0.0.1, not 0.0.0.0
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MessageTimeout=10
# a node that stops answering is DOWN after this long, and its jobs end
# NODE_FAIL (batch jobs are requeued unless submitted with --no-requeue)
SlurmdTimeout=${SLURMD_TIMEOUT}
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
NodeName=n[1-${NODES}] NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=$(
    [ "$NODES" = 1 ] && echo $((PORT + 1)) || echo "[$((PORT + 1))-$((PORT + NODES))]"
  ) CPUs=${VCPUS} RealMemory=4000 State=UNKNOWN
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

# wait_nodes_up: every node n1..nK answers and takes jobs (idle, or busy
# with jobs: `up` may run again while tests use the cluster)
wait_nodes_up() {
  local n st ok all deadline=$((SECONDS + TIMEOUT))
  while :; do
    ok=1 all=""
    for n in $(nodes); do
      st=$(sinfo -h -n "$n" -o '%t' 2>/dev/null || true)
      all+=" $n=${st:-?}"
      case "$st" in
        idle | mix | alloc | comp) ;;
        # a node left DOWN/DRAINED by an earlier run (or a bad config) is resumed
        down* | drain* | drng* | inval*)
          ok=0
          scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
        *) ok=0 ;;
      esac
    done
    [ $ok = 1 ] && return 0
    [ $SECONDS -lt "$deadline" ] || die "nodes not up after ${TIMEOUT}s:$all"
    sleep 0.2
  done
}

# expect_nodes FILE: FILE holds one SLURMD_NODENAME per task, 2 tasks per node,
# and names every node n1..nK
expect_nodes() {
  local want got
  want=$(nodes | sort | tr '\n' ' ')
  got=$(sort -u "$1" | tr '\n' ' ')
  [ "$(grep -c . "$1")" = $((2 * NODES)) ] && [ "$got" = "$want" ]
}

# End-to-end probe: munge -> slurmctld -> every slurmd -> slurmstepd -> srun
# steps over all nodes, in a batch job and interactively. Polls scontrol
# instead of `sbatch --wait` (which polls with growing sleeps, >= 2 s). Also
# absorbs the ~3 s before a fresh slurmctld runs its first job.
probe() {
  local out=$LOGD/probe.out id st deadline spread=(-N "$NODES" -n $((2 * NODES)) --ntasks-per-node=2)
  rm -f "$out"
  id=$(sbatch --parsable -J cluster-sh-probe "${spread[@]}" -t 1 -o "$out" \
    --wrap 'srun printenv SLURMD_NODENAME') || die "sbatch of the probe job failed"
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
  expect_nodes "$out" || { cat "$out" >&2; die "probe job $id: expected 2 tasks on each of $(nodes | tr '\n' ' ')"; }
  # interactive step (srun I/O sockets back to the client on 127.0.0.1); its
  # stderr apart: "queued and waiting for resources" while the nodes are busy
  timeout "$TIMEOUT" srun -J cluster-sh-probe "${spread[@]}" -t 1 printenv SLURMD_NODENAME >"$out" 2>"$out.err" \
    || { cat "$out" "$out.err" >&2; die "interactive srun ${spread[*]} failed"; }
  expect_nodes "$out" || { cat "$out" "$out.err" >&2; die "interactive srun: expected 2 tasks on each of $(nodes | tr '\n' ' ')"; }
}

# cancel_jobs: cancel every job of this cluster and wait until the queue is
# empty. Trap: stopping slurmd does not kill running jobs (slurmstepd lives
# on), so this comes before stopping any daemon.
cancel_jobs() {
  alive "$RUN/slurmctld.pid" slurmctld || return 0
  local ids deadline
  ids=$(timeout 20 squeue -h -o %A 2>/dev/null || true)
  [ -n "$ids" ] || return 0
  log "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # word splitting of the id list is intended
  scancel --full $ids 2>/dev/null || true
  deadline=$((SECONDS + 30))
  while [ -n "$(timeout 20 squeue -h -o %A 2>/dev/null || true)" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.2
  done
}

# within VALUE MIN MAX: VALUE is a whole number from MIN to MAX
within() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

check_settings() {
  within "$NODES" 1 64 || { log "--nodes $NODES: must be a number of nodes from 1 to 64"; exit 2; }
  within "$PORT" 1024 $((65535 - 66)) \
    || { log "SLURM_TEST_PORT=$PORT: must be >= 1024 and leave room for 66 ports (nodes, accounting) below 65536"; exit 2; }
  [[ $ACCOUNTING =~ ^[01]$ ]] || { log "SLURM_TEST_ACCOUNTING=$ACCOUNTING: must be 0 or 1"; exit 2; }
  within "$VCPUS" 1 4096 || { log "SLURM_TEST_CPUS=$VCPUS: must be a number of CPUs from 1 to 4096"; exit 2; }
  within "$SLURMD_TIMEOUT" 3 65535 \
    || { log "SLURM_TEST_SLURMD_TIMEOUT=$SLURMD_TIMEOUT: must be a number of seconds, at least 3"; exit 2; }
}

cmd_up() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  local t0=$SECONDS n new
  install_packages
  # Trap: slurmd checks NodeHostname against `hostname -s`, and MPICH's hydra
  # proxies connect back to the hostname: it must resolve.
  if ! getent hosts "$HOST" >/dev/null; then
    log "adding '127.0.0.1 $HOST' to /etc/hosts"
    echo "127.0.0.1 $HOST" >>/etc/hosts
  fi
  mkdir -p "$DIR/state" "$LOGD" "$RUN"
  for n in $(nodes); do mkdir -p "$DIR/spool/$n"; done
  rm -f "$DIR/env"   # rewritten at the end, only if the cluster works
  # readable by unprivileged clients (SLURM_CONF must be readable)
  chmod 0755 "$DIR"
  export SLURM_CONF=$CONF

  new=$(write_conf)
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" != "$new" ]; then
    # the old daemons are found through the old config (ports, munge socket)
    if any_alive; then
      log "config changed (nodes=$NODES cpus=$VCPUS port=$PORT): cancelling jobs, restarting every daemon"
      cancel_jobs
      stop_daemons
    fi
  fi
  start_munge
  write_epilog >"$DIR/epilog.sh.tmp"
  chmod 0755 "$DIR/epilog.sh.tmp"
  mv -f "$DIR/epilog.sh.tmp" "$DIR/epilog.sh"
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new" ]; then
    printf '%s\n' "$new" >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
  fi

  if [ "$ACCOUNTING" = 1 ]; then
    start_mariadb
    start_slurmdbd
  fi
  # Each daemonizes and writes its pid file (SlurmctldPidFile, SlurmdPidFile).
  if ! alive "$RUN/slurmctld.pid" slurmctld; then
    log "starting slurmctld (port $PORT)"
    spawn slurmctld slurmctld -f "$CONF" || die "slurmctld failed to start"
  fi
  for n in $(nodes); do
    if ! alive "$RUN/slurmd-$n.pid" slurmd; then
      log "starting slurmd -N $n"
      # Trap: with several slurmd on one host, -N is mandatory: without it
      # slurmd looks for a node named like the host
      spawn "slurmd-$n" slurmd -f "$CONF" -N "$n" || die "slurmd -N $n failed to start"
    fi
  done

  wait_nodes_up
  probe
  log "ready in $((SECONDS - t0)) s: $(sinfo -h -o '%P %a nodes=%D %t %N cpus/node=%c') port=$PORT ($(slurmctld -V))"
  printf 'export SLURM_CONF=%q\n' "$CONF" >"$DIR/env"
  cat "$DIR/env"
}

cmd_down() {
  export SLURM_CONF=$CONF
  cancel_jobs
  stop_daemons
  rm -f "$DIR/env"   # written by a successful `up` only
  if [ "${SLURM_TEST_PURGE:-0}" = 1 ]; then
    log "purging state and spool"
    rm -rf "${DIR:?}/state" "${DIR:?}/spool" "$DIR/first_job_id"
  fi
  log "down"
}

cmd_status() {
  export SLURM_CONF=$CONF
  local f name rc=0
  while read -r f name; do
    if alive "$f" "$name"; then
      echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
    elif [ -e "$f" ] || [ "$name" != slurmd ]; then
      echo "$(basename "$f" .pid): not running (by our pid files)"; rc=1
    fi
  done < <(daemons)
  if alive "$RUN/slurmctld.pid" slurmctld; then
    sinfo -N -o '%N %P %t %c %E' || rc=1
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

usage() { echo "usage: $0 up [--nodes K] [--accounting] | down | status" >&2; exit 2; }

command=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) [ $# -ge 2 ] || usage; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    --accounting) ACCOUNTING=1; shift ;;
    *) usage ;;
  esac
done
case "$command" in
  up) check_settings; lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
