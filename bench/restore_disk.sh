#!/usr/bin/env bash
# Restores onto a real disk, arca and restic in the same conditions: both repositories on
# tmpfs (so the disk only sees the restore), each restore into a new directory on the disk,
# the two tools alternating so that neither always runs first, and a pause before each pass
# (ext4 allocates inodes slowly right after many were deleted: whichever tool restores just
# after a large `rm -rf` pays for it, which once made an order artefact look like a ranking).
#
#   bench/restore_disk.sh                  # the generated set under $BENCH_DATA/src
#   SRC=/path/to/tree DISK=/var/tmp RUNS=2 bench/restore_disk.sh
#
# DISK (default /tmp) must be on the disk to measure (not tmpfs). Every restore is compared
# with `diff -r` against the source. Prints one line per restore and the medians.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DATA=${BENCH_DATA:-/tmp/bench-data}
SRC=${SRC:-$DATA/src}
DISK=${DISK:-/tmp}
RUNS=${RUNS:-2}
PAUSE=${PAUSE:-45}
[ -d "$SRC" ] || { echo "no data set at $SRC (bench/compare.sh generates one)"; exit 1; }
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
(cd "$ROOT" && cargo build --release --quiet)
ARCA=$ROOT/target/release/arca
REPOS=$(mktemp -d /dev/shm/arca-restore-disk.XXXXXX)
OUT=$(mktemp -d "$DISK/arca-restore-disk.XXXXXX")
trap 'rm -rf "$REPOS" "$OUT"' EXIT
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(df -T "$DISK" | awk 'NR==2{print $2}') at $DISK, $SRC"
export RESTIC_PASSWORD=bench-passphrase-not-a-secret ARCA_PASSPHRASE=bench-passphrase-not-a-secret
export ARCA_CATALOG=$REPOS/catalog.db
restic -q init -r "$REPOS/restic" >/dev/null
restic -q -r "$REPOS/restic" backup "$SRC" >/dev/null
"$ARCA" -q init "$REPOS/arca"
"$ARCA" -q job create bench --repo "$REPOS/arca" --source "$SRC" --encryption passphrase
"$ARCA" -q backup bench

one() { # one TOOL N
  local t="$OUT/$1-$2" cmd dir
  if [ "$1" = restic ]; then
    cmd=(restic -q -r "$REPOS/restic" restore latest --target "$t")
    dir="$t$SRC" # restic restores the absolute path below the target
  else
    cmd=("$ARCA" -q restore bench --target "$t")
    dir=$t
  fi
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$OUT/time" "${cmd[@]}" >/dev/null
  local ok=no
  diff -r --no-dereference -q "$SRC" "$dir" >/dev/null 2>&1 && ok=yes
  read -r wall user sys rss <"$OUT/time"
  printf '%-6s run %s: %6.2f s wall, %6.2f s user, %6.2f s system, %4d MB, verified %s\n' \
    "$1" "$2" "$wall" "$user" "$sys" $((rss / 1024)) "$ok"
  echo "$1 $wall" >>"$OUT/walls"
}

for n in $(seq 1 "$RUNS"); do
  rm -rf "${OUT:?}"/restic-* "${OUT:?}"/arca-*
  sync
  sleep "$PAUSE"
  if [ $((n % 2)) -eq 1 ]; then order="restic arca"; else order="arca restic"; fi
  for tool in $order; do one "$tool" "$n"; done
done
for t in arca restic; do
  awk -v t="$t" '$1 == t {print $2}' "$OUT/walls" | sort -n |
    awk -v t="$t" '{a[NR] = $1} END {m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
      printf "%s: median %.2f s over %d restores\n", t, m, NR}'
done
