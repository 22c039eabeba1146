#!/usr/bin/env bash
# arca next to restic and borg on the same dataset, in one run (the machines are noisy:
# compare ratios from one run, not absolute times across runs).
#   bench/compare.sh            # SIZE_MB, SEED, RUNS, PEERS as in ../shared/bench/run_peers.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$HERE/../../shared/bench}
export PEERS=${PEERS:-"restic borg"} BASELINES=${BASELINES:-0}
need=()
for c in restic borg /usr/bin/time; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq restic borgbackup time zstd
fi
bash "$SHARED/run_peers.sh"
res=$(ls -td "${BENCH_DATA:-/tmp/bench-data}"/results/*/ | head -1)
echo; echo "== peers ($res/results.tsv)"; cat "$res/results.tsv"
echo; echo "== arca"; bash "$HERE/arca_bench.sh"
