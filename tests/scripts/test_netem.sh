#!/usr/bin/env bash
# Tests scripts/netem.sh, the emulated interconnect: a shaped rate really limits TCP loopback
# throughput (and `unshaped` does not), the command's exit status, stdin, environment and working
# directory come through, no namespace (and no process inside one) is left behind after a normal
# run, a failing command, SIGTERM to the script or Ctrl-C, and bad usage exits 2 with a message.
# Exits 77 (skipped) where network namespaces cannot be made (not root, no CAP_NET_ADMIN, no tbf).
# Usage: test_netem.sh [PATH/TO/netem.sh]   (about 5 s)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
netem=${1:-$here/../../scripts/netem.sh}
[ -f "$netem" ] || { echo "FAIL: no script at $netem"; exit 1; }
netem=(bash "$netem")

failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
work=$(mktemp -d)
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

# The namespace named on the "netem: namespace NAME: ..." line of a log.
ns_of() { sed -n 's/^netem: namespace \([^:]*\):.*/\1/p' "$1" 2>/dev/null | head -n 1; }
ns_present() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
# Checks that the namespace of log $1 was made and is gone; $2 names the case.
check_gone() {
  local ns
  ns=$(ns_of "$1")
  if [ -z "$ns" ]; then fail "$2: no 'netem: namespace' line on stderr"; cat "$1"; return; fi
  if ns_present "$ns"; then
    fail "$2: namespace $ns left behind"; ip netns del "$ns" 2>/dev/null
  else
    pass "$2: namespace $ns deleted"
  fi
}

# --- 4. Bad usage: exit 2 and a message naming the problem (needs no privileges) ---
expect_usage_error() {  # $1: substring of the message; rest: arguments
  local want=$1 out status; shift
  out=$("${netem[@]}" "$@" 2>&1 </dev/null); status=$?
  if [ "$status" -eq 2 ] && grep -qi -- "$want" <<<"$out"; then
    pass "usage error for '$*' (exit 2: $out)"
  else
    fail "for '$*' expected exit 2 and a message with '$want', got exit $status: $out"
  fi
}
expect_usage_error "rate is required" -- true
expect_usage_error "bad --rate 'fast'" --rate fast -- true
expect_usage_error "bad --rate '200'" --rate 200 -- true
expect_usage_error "above zero" --rate 0mbit -- true
expect_usage_error "no command" --rate 200mbit
expect_usage_error "unknown option '--speed'" --speed 1gbit -- true
expect_usage_error "bad --burst" --rate 200mbit --burst 10kb -- true
expect_usage_error "bad --latency" --rate 200mbit --latency soon -- true
expect_usage_error "needs a value" --rate
if "${netem[@]}" --help | grep -q "btl_tcp_if_include lo"; then pass "--help names the MPI flags"; else fail "--help"; fi
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1 && "${as_nobody[@]}" true 2>/dev/null; then
  out=$("${as_nobody[@]}" "${netem[@]}" --rate 200mbit -- true 2>&1); status=$?
  if [ "$status" -eq 2 ] && grep -q "must run as root" <<<"$out"; then pass "refuses a non-root user: $out"
  else fail "as a non-root user expected exit 2 and 'must run as root', got $status: $out"; fi
fi
if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi

# --- Can this machine make a shaped namespace at all? If not, skip the rest. ---
[ "$(id -u)" -eq 0 ] || { echo "SKIP: not root, cannot create network namespaces"; exit 77; }
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || { echo "SKIP: iproute2 (ip, tc) missing"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 missing"; exit 77; }
probe="ampipe-netem-probe-$$"
if ! err=$(ip netns add "$probe" 2>&1); then echo "SKIP: ip netns add not permitted here: $err"; exit 77; fi
if ! err=$(ip netns exec "$probe" ip link set lo up 2>&1 &&
           ip netns exec "$probe" tc qdisc add dev lo root tbf rate 20mbit burst 256kb latency 50ms 2>&1); then
  ip netns del "$probe"; echo "SKIP: cannot shape loopback in a namespace here: $err"; exit 77
fi
ip netns del "$probe"

# --- 1. A shaped rate limits throughput; unshaped does not ---
# Sends N bytes over TCP on 127.0.0.1 and prints the seconds from connect to the last byte received.
cat > "$work/xfer.py" <<'EOF'
import socket, sys, threading, time
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
got = [0]
def serve():
    conn, _ = srv.accept()
    while True:
        b = conn.recv(1 << 20)
        if not b: break
        got[0] += len(b)
    conn.close()
t = threading.Thread(target=serve); t.start()
cl = socket.create_connection(srv.getsockname())
t0 = time.monotonic()
buf = b"x" * 65536; left = n
while left > 0:
    left -= cl.send(buf[:min(left, len(buf))])
cl.shutdown(socket.SHUT_WR); t.join(); cl.close()
dt = time.monotonic() - t0
assert got[0] == n, got[0]
print("%.3f" % dt)
EOF
bytes=2500000   # 20 Mbit at 20mbit/s: 1 s
shaped=$(timeout 15 "${netem[@]}" --rate 20mbit -- python3 "$work/xfer.py" "$bytes" 2>"$work/shaped.log")
status=$?
if [ "$status" -ne 0 ] || [ -z "$shaped" ]; then
  fail "shaped transfer failed (exit $status)"; cat "$work/shaped.log"
elif awk -v t="$shaped" 'BEGIN { exit !(t >= 0.6 && t <= 3.0) }'; then
  pass "2.5 MB at 20mbit took $shaped s (expected about 1 s)"
else
  fail "2.5 MB at 20mbit took $shaped s, expected 0.6-3 s"
fi
grep -q "shaped to 20mbit" "$work/shaped.log" && pass "stderr names the rate: $(head -n 1 "$work/shaped.log")" ||
  fail "no line naming the rate on stderr"
check_gone "$work/shaped.log" "shaped run"
unshaped=$(timeout 15 "${netem[@]}" --rate unshaped -- python3 "$work/xfer.py" "$bytes" 2>"$work/unshaped.log")
status=$?
if [ "$status" -ne 0 ] || [ -z "$unshaped" ]; then
  fail "unshaped transfer failed (exit $status)"; cat "$work/unshaped.log"
elif [ -n "$shaped" ] && awk -v u="$unshaped" -v s="$shaped" 'BEGIN { exit !(u < 0.3 && u * 5 < s) }'; then
  pass "2.5 MB unshaped took $unshaped s (shaped: $shaped s)"
else
  fail "2.5 MB unshaped took $unshaped s, expected well under the shaped $shaped s"
fi
grep -q "unshaped" "$work/unshaped.log" && pass "stderr says unshaped" || fail "no 'unshaped' on stderr"
check_gone "$work/unshaped.log" "unshaped run"

# --- 2. Exit status, stdin, environment and working directory come through ---
for want in 0 1 7 42; do
  "${netem[@]}" --rate 1gbit -- sh -c "exit $want" 2>"$work/status.log"; status=$?
  [ "$status" -eq "$want" ] && pass "inner exit status $want returned" || fail "inner exit $want, netem returned $status"
done
check_gone "$work/status.log" "failing command"
mkdir -p "$work/cwd"
out=$(cd "$work/cwd" && echo from-stdin | AMPIPE_TEST_VAR=kept "${netem[@]}" --rate 200mbit -- \
      sh -c 'read line; echo "$line $AMPIPE_TEST_VAR $AMPIPE_LINK $(pwd)"' 2>"$work/env.log")
want="from-stdin kept 200mbit $work/cwd"
[ "$out" = "$want" ] && pass "stdin, environment (AMPIPE_LINK=200mbit) and working directory passed" ||
  fail "expected '$want', got '$out'"
"${netem[@]}" --rate unshaped -- /nonexistent/command 2>/dev/null; status=$?
[ "$status" -eq 127 ] && pass "a command that does not exist: exit 127" || fail "a command that does not exist: exit $status, expected 127"

# --- 3. Nothing left behind: processes the command left running, SIGTERM, Ctrl-C ---
marker=$((RANDOM % 1000 + 3000)).25   # a sleep length no other process uses
"${netem[@]}" --rate 200mbit -- sh -c "sleep $marker & exit 3" 2>"$work/orphan.log"; status=$?
[ "$status" -eq 3 ] || fail "orphan case: expected exit 3, got $status"
check_gone "$work/orphan.log" "command leaving a background process"
sleep 0.2
left=$(pgrep -f "sleep $marker")
[ -n "$left" ] && { fail "a process left inside the namespace survived"; kill -KILL $left; } ||
  pass "a process the command left behind was ended"

# Starts netem in the background on `sleep MARKER`, waits until its namespace exists, sends a signal
# and checks the exit status, the time taken, the namespace and the sleep.  $1: signal; $2: "group"
# to signal the whole process group (what Ctrl-C does) or "script"; $3: expected exit status.
signal_case() {
  local sig=$1 target=$2 want=$3 pid ns status i t0 t1 left log="$work/$1.log"
  marker=$((RANDOM % 1000 + 4000)).75
  set -m   # own process group, default signal dispositions for the background job
  "${netem[@]}" --rate 20mbit -- sleep "$marker" 2>"$log" &
  pid=$!
  set +m
  bg_pids+=("$pid")
  ns=""
  for ((i = 0; i < 50; i++)); do
    ns=$(ns_of "$log")
    [ -n "$ns" ] && pgrep -f "sleep $marker" >/dev/null && break
    sleep 0.1
  done
  [ -n "$ns" ] && ns_present "$ns" || { fail "SIG$sig: the namespace never appeared"; cat "$log"; return; }
  t0=$(date +%s%N)
  if [ "$target" = group ]; then kill -"$sig" -- "-$pid"; else kill -"$sig" "$pid"; fi
  wait "$pid"; status=$?
  t1=$(date +%s%N)
  [ "$status" -eq "$want" ] && pass "SIG$sig to the $target: exit $status after $(( (t1 - t0) / 1000000 )) ms" ||
    fail "SIG$sig to the $target: expected exit $want, got $status"
  check_gone "$log" "SIG$sig to the $target"
  left=$(pgrep -f "sleep $marker")
  [ -n "$left" ] && { fail "SIG$sig: the command survived"; kill -KILL $left; } ||
    pass "SIG$sig: the command was ended"
}
signal_case TERM script 143
signal_case INT group 130

# A run killed with SIGKILL cannot clean up; the next run removes its namespace once empty.
"${netem[@]}" --rate 20mbit -- sleep 60 2>"$work/kill.log" &
pid=$!
bg_pids+=("$pid")
for ((i = 0; i < 50; i++)); do ns=$(ns_of "$work/kill.log"); [ -n "$ns" ] && break; sleep 0.1; done
inner=""
for ((i = 0; i < 50; i++)); do inner=$(ip netns pids "$ns" 2>/dev/null); [ -n "$inner" ] && break; sleep 0.1; done
kill -KILL "$pid"; wait "$pid" 2>/dev/null
[ -n "$inner" ] && kill -KILL $inner
sleep 0.2
if [ -n "$ns" ] && ns_present "$ns"; then
  "${netem[@]}" --rate 1gbit -- true 2>"$work/sweep.log"
  if ns_present "$ns"; then fail "a SIGKILLed run's namespace $ns was not removed by the next run"; ip netns del "$ns"
  else pass "the next run removed SIGKILLed run's namespace: $(grep stale "$work/sweep.log")"; fi
else
  fail "SIGKILL case: no namespace to sweep"; cat "$work/kill.log"
fi

leftover=$(ip netns list 2>/dev/null | awk '$1 ~ /^ampipe-netem-/ {print $1}')
[ -z "$leftover" ] || echo "note: ampipe-netem namespaces present (maybe another run's): $leftover"

if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all netem checks passed"
