#!/usr/bin/env bash
# dependency_table.sh: the folder dependency table of docs/ARCHITECTURE.md, from the #includes of
# src/. Rows include columns; a cell counts the row folder's files with at least one
# `#include "<column>/..."`; `.` marks the folder itself. Then every edge between folders (except into
# core/), by header, with the files that include it. Run from anywhere; prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/../src"
folders=(core kernels comm model pipeline plan train cli)
printf '| folder |'; for g in "${folders[@]}"; do printf ' %s |' "$g"; done; echo
printf '|---|'; for _ in "${folders[@]}"; do printf -- '---|'; done; echo
for f in "${folders[@]}"; do
  printf '| `%s/` |' "$f"
  for g in "${folders[@]}"; do
    if [ "$f" = "$g" ]; then printf ' . |'; continue; fi
    n=$( (grep -rl "#include \"$g/" "$f" || true) | wc -l)
    if [ "$n" -gt 0 ]; then printf ' %s |' "$n"; else printf '  |'; fi
  done
  echo
done
echo
for f in "${folders[@]}"; do
  for g in "${folders[@]}"; do
    [ "$f" = "$g" ] || [ "$g" = core ] && continue
    files=$( (grep -rl "#include \"$g/" "$f" || true) | sort | sed 's/^/`/; s/$/`/' | paste -sd, - | sed 's/,/, /g')
    [ -n "$files" ] || continue
    headers=$( (grep -rhoE "#include \"$g/[^\"]+\"" "$f" || true) | sed -E 's/#include "([^"]+)"/`\1`/' | sort -u | paste -sd, - | sed 's/,/, /g')
    echo "- \`$f/\` -> \`$g/\`: $headers (from $files)"
  done
done
