#!/usr/bin/env bash
# arca on the shared benchmark dataset, in the same phases as ../shared/bench/run_peers.sh:
# full backup, incremental after `gen_dataset.py mutate`, restore + diff -r, peak RSS,
# repository size. Prints one TSV row in run_peers.sh's results format.
#
#   bench/arca_bench.sh                 # uses /tmp/bench-data/src (generated if missing)
#   SRC=/path/to/tree SIZE_MB=1024 RUNS=3 bench/arca_bench.sh
#
# Encryption: passphrase (Argon2id at the release defaults), zstd level 1 (the default), AES-256-GCM.
# The repository size is taken right after the full backup, as run_peers.sh does for the peers.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
DATA=${BENCH_DATA:-/tmp/bench-data}
SRC=${SRC:-$DATA/src}
SIZE_MB=${SIZE_MB:-1024}
SEED=${SEED:-42}
RUNS=${RUNS:-1}
MSTATE=${SRC%/}.mutate-state
GEN="python3 $SHARED/gen_dataset.py"
export ARCA_PASSPHRASE=${BENCH_PASSPHRASE:-bench-passphrase-not-a-secret}
unset ARCA_INSECURE_TEST_KDF

command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }
(cd "$ROOT" && cargo build --release --quiet)
ARCA=$ROOT/target/release/arca
[ -d "$SRC" ] || $GEN generate --out "$SRC" --size-mb "$SIZE_MB" --seed "$SEED"
BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s+=$1} END{printf "%d", s}')
mkdir -p "$DATA"
WORK=$(mktemp -d "$DATA/arca-bench.XXXXXX") # beside the peers' repositories and restore targets
trap '[ -f "$MSTATE/undo.json" ] && $GEN undo --state "$MSTATE" >/dev/null; rm -rf "$WORK"' EXIT

timed() { # timed NAME cmd... -> WALL RSS_MB
  local t0 t1
  sync
  t0=$(date +%s%N)
  /usr/bin/time -v -o "$WORK/$1.time" "${@:2}" >"$WORK/$1.log" 2>&1 || { cat "$WORK/$1.log"; exit 1; }
  t1=$(date +%s%N)
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}')
  RSS_MB=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$WORK/$1.time")
}

printf 'tool\tbackup_s\tbackup_MBps\tincr_s\trestore_s\trestore_MBps\tpeak_rss_MB\trepo_MB\tverified\trestore_rss_MB\n'
for run in $(seq 1 "$RUNS"); do
  export ARCA_CATALOG=$WORK/r$run/catalog.db
  "$ARCA" -q init "$WORK/r$run/repo"
  "$ARCA" -q job create bench --repo "$WORK/r$run/repo" --source "$SRC" --encryption passphrase
  timed "full$run" "$ARCA" -q backup bench; FULL=$WALL; RSS=$RSS_MB
  # Measured where run_peers.sh measures the peers' repositories: right after the full backup.
  REPO_MB=$(du -sb "$WORK/r$run/repo" | awk '{printf "%.1f", $1/1e6}')
  sleep 1.1 # as run_peers.sh: changes get an mtime after the backup's second
  $GEN mutate --out "$SRC" --state "$MSTATE" >/dev/null
  timed "incr$run" "$ARCA" -q backup bench; INCR=$WALL; [ "$RSS_MB" -gt "$RSS" ] && RSS=$RSS_MB
  timed "restore$run" "$ARCA" -q restore bench --target "$WORK/r$run/out"; REST=$WALL; RRSS=$RSS_MB
  if diff -r --no-dereference -q "$SRC" "$WORK/r$run/out" >"$WORK/diff$run.txt" 2>&1; then OK=yes; else
    OK=no; echo "restore differs from the source:" >&2; head -5 "$WORK/diff$run.txt" >&2; fi
  $GEN undo --state "$MSTATE" >/dev/null
  printf 'arca %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$("$ARCA" --version | awk '{print $2}')" "$FULL" \
    "$(awk -v b="$BYTES" -v s="$FULL" 'BEGIN{printf "%.1f", b/1e6/s}')" "$INCR" "$REST" \
    "$(awk -v b="$BYTES" -v s="$REST" 'BEGIN{printf "%.1f", b/1e6/s}')" "$RSS" "$REPO_MB" "$OK" "$RRSS"
  rm -rf "$WORK/r$run"
done
