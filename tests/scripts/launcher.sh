# Sourced by the script tests that run a job on 1 rank or under mpiexec (test_checkpoint_kill.sh,
# test_checkpoint_full_disk.sh). Their arguments: AMPIPE_BINARY [RANKS [MPIEXEC [MPIEXEC FLAGS...]]].
# parse_launcher "$@" sets bin, ranks (default 1) and launcher: empty for one rank, else the mpiexec
# command line with -np RANKS, to put in front of "$bin". Bad usage exits 2.
parse_launcher() {
  bin=$1
  ranks=${2:-1}
  shift $(($# >= 2 ? 2 : 1))
  launcher=()
  if [ "$ranks" -gt 1 ]; then
    [ $# -ge 1 ] || { echo "usage: $0 AMPIPE_BINARY RANKS MPIEXEC [FLAGS...]" >&2; exit 2; }
    launcher=("$@" -np "$ranks")
  fi
}
