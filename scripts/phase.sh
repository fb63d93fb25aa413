# Sourced by the scripts that run in steps (.ci/run, scripts/test_sanitizers.sh, scripts/fuzz.sh).
# phase NAME COMMAND...: prints "== NAME", runs the command, then "== NAME: S s" (its wall time).
# A failing command ends a `set -e` caller before the second line.
phase() {
  local name=$1 t0=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: $((SECONDS - t0)) s"
}
