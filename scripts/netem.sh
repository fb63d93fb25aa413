#!/usr/bin/env bash
# netem.sh: run a command on an emulated slow interconnect.
#
# The command runs inside a private network namespace of its own whose loopback interface is
# rate-shaped with tc (a token bucket filter, optionally with a netem delay). Why: on one machine the
# MoE all-to-all between ranks is nearly free, which hides the bottleneck ampipe exists to remove. A
# real cluster's link is slow relative to its compute: per GPU, ~400 TFLOP/s of bf16 against ~50 GB/s
# of InfiniBand. One CPU core here does ~100 GFLOP/s, 4000x less, so a loopback of ~12.5 MB/s
# (100-200 Mbit/s) gives the same compute-to-traffic ratio (docs/BENCHMARKS.md). Use it for
# benchmarks and training runs whose point is communication/compute overlap; `--rate unshaped` gives
# the fast end of the same table (TCP loopback, still in a private namespace).
#
# Inside the namespace MPI must use TCP over loopback (shared memory would bypass the shaping):
#   scripts/netem.sh --rate 200mbit -- mpirun --mca btl tcp,self --mca btl_tcp_if_include lo \
#       --mca oob_tcp_if_include lo -np 2 ./build/ampipe bench ...
# Loopback is one queue, so all ranks share the rate, like a shared bus (not one link per rank):
# say so next to every number measured under it.
#
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2 (`ip netns`, `tc`). The namespace is
# deleted on every exit path (normal end, failure, SIGINT/SIGTERM/SIGHUP); processes still inside it
# are ended first. Only SIGKILL of this script can leave one behind; the next run removes it.
# Exits with the command's status; 2 when it refuses to start (usage, permissions, setup), 127 when
# the command does not exist.
set -uo pipefail

prog=netem
usage() {
  cat <<'EOF'
Usage: scripts/netem.sh --rate RATE [--burst SIZE] [--latency TIME] [--delay TIME] -- COMMAND [ARGS...]

Runs COMMAND in a private network namespace whose loopback interface is rate-shaped with tc
(tbf rate RATE burst SIZE latency TIME; plus netem delay TIME when --delay is not zero), so that
MPI over TCP loopback sees a link as slow, relative to compute, as a real cluster's
(docs/BENCHMARKS.md: ~100-200mbit here matches an H100 on 400 Gb/s InfiniBand). Use it to measure
communication/compute overlap; on an unshaped machine the all-to-all is nearly free.

  --rate RATE     tc rate with a unit: bit, kbit, mbit, gbit, tbit (bits/s), bps, kbps, mbps,
                  gbps, tbps (bytes/s), or kibit, mibit, ... ; e.g. 200mbit, 1gbit.
                  `unshaped`: no qdisc (still a private namespace): the fast end of a table.
  --burst SIZE    token bucket size (default 256kb; at least 65kb, the loopback MTU is 64 KiB).
                  After the link idles, this many bytes pass at full speed: messages smaller than
                  the bucket look faster than RATE. 65kb shapes small messages most faithfully.
  --latency TIME  longest a packet may wait in the bucket's queue (default 50ms).
  --delay TIME    extra delay per packet with netem (default 0ms; a round trip over loopback
                  pays it twice). Needs the kernel's sch_netem, which not every kernel has.
  -h, --help      this text.

Inside the namespace MPI must use TCP over loopback, e.g.
  scripts/netem.sh --rate 200mbit -- mpirun -np 2 --mca pml ob1 --mca btl tcp,self \
      --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo ./build/ampipe bench ...
(as root also OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; the environment and the
working directory are passed through). Loopback is one queue: all ranks share RATE, like a shared
bus, not one link per rank.

Prints one line to stderr with the rate in force, and sets AMPIPE_LINK (the rate, `unshaped`, or
e.g. `200mbit+delay5ms`) in COMMAND's environment so benchmarks can record it. Needs root and
iproute2. Exits with COMMAND's status (128+N if it died of signal N), 127 if it does not exist, or 2
if it refused to start.
The namespace is always deleted, also on failure, Ctrl-C and SIGTERM.
EOF
}
die() { echo "$prog: error: $*" >&2; exit 2; }

rate="" burst="256kb" latency="50ms" delay="0ms"
need_value() { [ $# -ge 2 ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --rate) need_value "$@"; rate=$2; shift 2 ;;
    --burst) need_value "$@"; burst=$2; shift 2 ;;
    --latency) need_value "$@"; latency=$2; shift 2 ;;
    --delay) need_value "$@"; delay=$2; shift 2 ;;
    --rate=*) rate=${1#*=}; shift ;;
    --burst=*) burst=${1#*=}; shift ;;
    --latency=*) latency=${1#*=}; shift ;;
    --delay=*) delay=${1#*=}; shift ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
[ -n "$rate" ] || die "--rate is required (e.g. --rate 200mbit, or --rate unshaped; see --help)"
[ $# -gt 0 ] || die "no command given (usage: netem.sh --rate RATE -- COMMAND [ARGS...])"

# Validation (tc's own units, compared case-insensitively as tc does).
number='([0-9]+([.][0-9]*)?|[.][0-9]+)'
shopt -s nocasematch
is_zero() { awk -v v="$1" 'BEGIN { exit !(v + 0 == 0) }'; }
if [ "$rate" != unshaped ]; then
  [[ "$rate" =~ ^${number}(bit|kbit|mbit|gbit|tbit|kibit|mibit|gibit|tibit|bps|kbps|mbps|gbps|tbps|kibps|mibps|gibps|tibps)$ ]] ||
    die "bad --rate '$rate': want a number with a tc unit (kbit, mbit, gbit, ...; e.g. 200mbit) or 'unshaped'"
  is_zero "${BASH_REMATCH[1]}" && die "bad --rate '$rate': must be above zero"
fi
time_re="^${number}(s|sec|secs|ms|msec|msecs|us|usec|usecs)$"
[[ "$latency" =~ $time_re ]] || die "bad --latency '$latency': want a time like 50ms"
is_zero "${BASH_REMATCH[1]}" && die "bad --latency '$latency': must be above zero"
[[ "$delay" =~ $time_re ]] || die "bad --delay '$delay': want a time like 5ms (or 0ms)"
delay_on=1; is_zero "${BASH_REMATCH[1]}" && delay_on=0
[[ "$burst" =~ ^${number}(b|k|kb|m|mb|g|gb|bit|kbit|mbit|gbit)?$ ]] ||
  die "bad --burst '$burst': want a size like 256kb"
burst_bytes=$(awk -v n="${BASH_REMATCH[1]}" -v u="${BASH_REMATCH[3],,}" 'BEGIN {
  m["b"]=1; m[""]=1; m["k"]=m["kb"]=1024; m["m"]=m["mb"]=1048576; m["g"]=m["gb"]=1073741824;
  m["bit"]=1/8; m["kbit"]=1024/8; m["mbit"]=1048576/8; m["gbit"]=1073741824/8;
  printf "%d", n * m[u] }')
shopt -u nocasematch
# A packet larger than the bucket never passes: loopback frames reach 64 KiB plus headers.
[ "$burst_bytes" -ge 66560 ] || die "bad --burst '$burst': must be at least 65kb (loopback MTU is 64 KiB)"

command -v -- "$1" >/dev/null 2>&1 || { echo "$prog: error: command not found: $1" >&2; exit 127; }

# Environment checks.
[ "$(id -u)" -eq 0 ] || die "must run as root (creating a network namespace and a qdisc needs CAP_NET_ADMIN)"
command -v ip >/dev/null 2>&1 || die "'ip' not found: install the iproute2 package (scripts/setup.sh does)"
ip netns list >/dev/null 2>&1 || die "'ip netns' is unavailable on this system (iproute2 too old, or no network namespaces)"
if [ "$rate" != unshaped ] || [ "$delay_on" -eq 1 ]; then
  command -v tc >/dev/null 2>&1 || die "'tc' not found: install the iproute2 package (scripts/setup.sh does)"
fi

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
ns_pids() { ip netns pids "$1" 2>/dev/null; }
# End every process inside namespace $1: signal, wait up to $2 seconds, then SIGKILL.
end_ns_processes() {
  local ns=$1 grace=$2 pids i
  pids=$(ns_pids "$ns")
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do
    [ -n "$(ns_pids "$ns")" ] || return 0
    sleep 0.1
  done
  pids=$(ns_pids "$ns")
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  for ((i = 0; i < 20; i++)); do [ -n "$(ns_pids "$ns")" ] || return 0; sleep 0.1; done
}

# Remove namespaces left by an earlier run that was SIGKILLed: its creator is gone and nothing
# runs inside. Names are ampipe-netem-<creator pid>-<random>.
for stale in $(ip netns list 2>/dev/null | awk '$1 ~ /^ampipe-netem-[0-9]+-[0-9]+$/ {print $1}'); do
  creator=${stale#ampipe-netem-}; creator=${creator%-*}
  if ! kill -0 "$creator" 2>/dev/null && [ -z "$(ns_pids "$stale")" ]; then
    ip netns del "$stale" 2>/dev/null && echo "$prog: removed stale namespace $stale" >&2
  fi
done

ns="ampipe-netem-$$-$RANDOM"
child=""
cleaned=0
cleanup() {
  [ "$cleaned" -eq 1 ] && return 0
  cleaned=1
  if ns_exists "$ns"; then
    end_ns_processes "$ns" 3
    ip netns del "$ns" 2>/dev/null || echo "$prog: warning: could not delete namespace $ns" >&2
  fi
}
on_signal() {  # $1: name, $2: number
  trap '' INT TERM HUP
  echo "$prog: caught SIG$1, ending the command and deleting namespace $ns" >&2
  if [ -n "$child" ]; then
    kill -"$1" "$child" 2>/dev/null
    local i
    for ((i = 0; i < 30; i++)); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
  fi
  cleanup
  [ -n "$child" ] && wait "$child" 2>/dev/null
  exit $((128 + $2))
}
trap cleanup EXIT
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

err=$(ip netns add "$ns" 2>&1) ||
  die "cannot create network namespace $ns: $err (needs CAP_NET_ADMIN and CAP_SYS_ADMIN; containers often lack them)"
err=$(ip netns exec "$ns" ip link set lo up 2>&1) || die "cannot bring up loopback in $ns: $err"

link=$rate
if [ "$rate" != unshaped ]; then
  if [ "$delay_on" -eq 1 ]; then
    # netem at the root delays, tbf under it shapes (the layout tc-netem(8) documents).
    err=$(ip netns exec "$ns" tc qdisc add dev lo root handle 1: netem delay "$delay" 2>&1) ||
      die "tc netem delay $delay failed: $err (is the sch_netem kernel module available?)"
    err=$(ip netns exec "$ns" tc qdisc add dev lo parent 1:1 handle 10: tbf rate "$rate" burst "$burst" latency "$latency" 2>&1) ||
      die "tc tbf rate $rate burst $burst latency $latency failed: $err"
    link="$rate+delay$delay"
  else
    err=$(ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$rate" burst "$burst" latency "$latency" 2>&1) ||
      die "tc tbf rate $rate burst $burst latency $latency failed: $err (is the sch_tbf kernel module available?)"
  fi
  echo "$prog: namespace $ns: loopback shaped to $rate (tbf burst $burst latency $latency, delay $delay), shared by all ranks; MPI must use --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo" >&2
else
  if [ "$delay_on" -eq 1 ]; then
    err=$(ip netns exec "$ns" tc qdisc add dev lo root netem delay "$delay" 2>&1) ||
      die "tc netem delay $delay failed: $err (is the sch_netem kernel module available?)"
    link="unshaped+delay$delay"
  fi
  echo "$prog: namespace $ns: loopback unshaped (delay $delay); MPI must use --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo" >&2
fi
export AMPIPE_LINK=$link

# Run in the background and wait, so that a signal reaches the trap at once rather than after the
# command ends. The subshell restores SIGINT/SIGQUIT (bash ignores them in background jobs) and
# `<&0` keeps the caller's stdin (bash would give a background job /dev/null). `ip netns exec`
# keeps the environment and the working directory and execs the command (same pid).
( trap - INT QUIT; exec ip netns exec "$ns" "$@" ) <&0 &
child=$!
wait "$child"
status=$?
child=""
cleanup
exit "$status"
