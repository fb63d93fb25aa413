# Sourced by the script tests that need Python packages: find_python "import a, b" sets $python to
# the first of $PYTHON, python3 and /usr/bin/python3 where the import succeeds, else to "".
find_python() {
  python=
  local candidate
  for candidate in "${PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c "$1" >/dev/null 2>&1; then
      python=$candidate
      return
    fi
  done
}
