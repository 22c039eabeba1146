#!/usr/bin/env bash
# arca next to restic and borg on the same data, in one run (the machines are noisy:
# compare ratios from one run, not absolute times across runs). For each data set it prints
# the peers' table, arca's row, and the ratios the performance targets are stated in.
#
#   bench/compare.sh                   # the shared generated set (SIZE_MB, SEED as in
#                                      # ../shared/bench/run_peers.sh)
#   REAL=/path/to/tree bench/compare.sh
#                                      # and a real tree nobody generated: copied first to
#                                      # $BENCH_DATA/real (the incremental phase mutates it)
#   REAL_ONLY=1 REAL=... bench/compare.sh
#
# BENCH_DATA (default /tmp/bench-data) holds data sets, repositories and restore targets;
# /dev/shm/bench-data compares software rather than this machine's disk.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$HERE/../../shared/bench}
DATA=${BENCH_DATA:-/tmp/bench-data}
export BENCH_DATA=$DATA
export PEERS=${PEERS:-"restic borg"} BASELINES=${BASELINES:-1}
need=()
for c in restic borg zstd /usr/bin/time; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq restic borgbackup time zstd
fi

ratios() { # ratios RESULTS.tsv BASELINES.tsv ARCA.tsv
  awk -F'\t' '
    FNR == 1 { file++; next }
    file == 1 && $1 ~ /^restic/ { rb = $3; ri = $4; rr = $6; rrss = $7; rrepo = $8; rrr = $10 }
    file == 2 && $1 ~ /^tar\|zstd/ { tz = $2 }
    file == 3 { ab = $3; as = $2; ai = $4; ar = $6; arss = $7; arepo = $8; arr = $10; ok = $9 }
    END {
      printf "full backup: %.2fx restic throughput (target >= 4), %.2fx tar|zstd -1 -T2 (target >= 0.9)\n", ab / rb, (tz > 0 ? tz / as : 0)
      printf "incremental: %.2fx restic time (target <= 0.5)\n", ai / ri
      printf "restore: %.2fx restic throughput (target >= 4), verified %s\n", ar / rr, ok
      printf "peak RSS: backup %s vs %s MB, restore %s vs %s MB (target <= restic)\n", arss, rrss, arr, rrr
      printf "repository: %.3fx restic (target <= 1.05)\n", arepo / rrepo
    }' "$1" "$2" "$3"
}

run_set() { # run_set LABEL SRC
  echo; echo "######## $1: $2"
  SRC=$2 bash "$SHARED/run_peers.sh"
  local res
  res=$(ls -td "$DATA"/results/*/ | head -1)
  echo; echo "== peers ($res/results.tsv)"; cat "$res/results.tsv"
  echo; echo "== arca"
  SRC=$2 bash "$HERE/arca_bench.sh" | tee "$res/arca.tsv"
  echo; echo "== ratios ($1, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r))"
  ratios "$res/results.tsv" "$res/baselines.tsv" "$res/arca.tsv" | tee "$res/ratios.txt"
}

echo "== machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), \
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== versions: $(restic version | head -1); $(borg --version); $(zstd --version)"
[ -n "${REAL_ONLY:-}" ] || run_set generated "${SRC:-$DATA/src}"
if [ -n "${REAL:-}" ]; then
  if [ ! -d "$DATA/real" ]; then
    mkdir -p "$DATA/real"
    cp -a "$REAL/." "$DATA/real/"
  fi
  # gen_dataset.py's mutation (the incremental phase) adds media/photos/IMG_new_0001.jpg.
  mkdir -p "$DATA/real/media/photos"
  # run_peers.sh generates a data set unless its manifest names the size and seed asked
  # for: this one says where the tree came from instead, with those values.
  printf '{"size_mb": %s, "seed": %s, "real_tree": "%s"}\n' "${SIZE_MB:-1024}" "${SEED:-42}" \
    "$REAL" >"$DATA/real.manifest.json"
  run_set "real ($REAL)" "$DATA/real"
fi
