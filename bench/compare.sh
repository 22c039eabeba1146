#!/usr/bin/env bash
# arca next to restic and borg on the same data, in one run (the machines are noisy:
# compare ratios from one run, not absolute times across runs). For each data set it prints
# the peers' table, arca's rows, and the ratios the performance targets are stated in, from
# the medians of RUNS runs of every tool and of the `tar | zstd` baseline (default 5).
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

# Medians: every tool runs RUNS times (default 5), in rounds, the baselines as often; one
# run's ratio against a 2-3 s baseline moves by 10% on this kind of shared machine, and the
# median of three rounds still moved by 5-8% between runs (about 13 minutes for both sets
# with five rounds on the 2-vCPU reference VM).
export RUNS=${RUNS:-5}

# Baselines, one run each, taken right after each arca run so that both see the same machine
# (a baseline measured minutes apart moved by 25% on this kind of shared machine):
#   tar_zstd SRC        -> wall seconds of `tar | zstd -1 -T2` (output to /dev/null)
#   untar_zstd ARCHIVE  -> wall seconds of `zstd -d | tar -x` into an empty directory, the
#                          cost of decompressing and creating the files with nothing else
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f\n", (b-a)/1e9}'; }
tar_zstd() {
  local t0 t1
  sync
  t0=$(date +%s%N)
  tar -cf - -C "$1" . | zstd -1 -T2 -c >/dev/null
  t1=$(date +%s%N)
  secs "$t0" "$t1"
}
untar_zstd() {
  local t0 t1 out=$DATA/baseline-out
  rm -rf "$out" && mkdir -p "$out" && sync
  t0=$(date +%s%N)
  zstd -dc "$1" | tar -xf - -C "$out"
  t1=$(date +%s%N)
  rm -rf "$out"
  secs "$t0" "$t1"
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# What the second CPU adds on this machine right now: one single-threaded `zstd -1` of 128 MiB
# alone, then two at once. On a shared VM two vCPUs may give far less than twice one, and
# arca's backup and restore (both CPUs busy throughout) lose more from that than tools that
# run mostly one thread at a time: printed at the start and at the end of each run.
cpu_probe() {
  local in=$DATA/cpu-probe.bin t0 t1 t2 alone pair
  if [ ! -s "$in" ]; then
    # Bytes from the machine's own files (binaries and libraries compress like real data).
    find /usr/lib /usr/bin -type f -size +1M 2>/dev/null | sort | xargs cat 2>/dev/null |
      head -c $((128 << 20)) >"$in" || true
  fi
  cat "$in" >/dev/null
  t0=$(date +%s%N)
  zstd -1 -T1 -q -c "$in" >/dev/null
  t1=$(date +%s%N)
  zstd -1 -T1 -q -c "$in" >/dev/null & zstd -1 -T1 -q -c "$in" >/dev/null; wait
  t2=$(date +%s%N)
  alone=$(secs "$t0" "$t1"); pair=$(secs "$t1" "$t2")
  echo "== cpu probe ($(date -u +%H:%M:%S) UTC): one zstd -1 -T1 of $(($(stat -c %s "$in") >> 20)) MiB alone ${alone} s, two at once ${pair} s:" \
    "the second CPU adds $(awk -v a="$alone" -v p="$pair" 'BEGIN{printf "%.2f", (p > 0 ? 2 * a / p - 1 : 0)}') of one"
}

ratios() { # ratios RESULTS.tsv ARCA.tsv TAR_ZSTD_SECONDS UNTAR_SECONDS
  awk -F'\t' -v tz="$3" -v ux="$4" '
    function med(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
      return a[int((n + 1) / 2)]
    }
    function max(list,   n, a, i, m) {
      n = split(list, a, " "); m = a[1] + 0
      for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0
      return m
    }
    FNR == 1 { file++; next }
    file == 1 && $1 ~ /^restic/ { rb = rb " " $3; ri = ri " " $4; rr = rr " " $6; rrss = rrss " " $7; rrepo = rrepo " " $8; rrr = rrr " " $10; rn++ }
    file == 2 { ab = ab " " $3; as = as " " $2; as_r = as_r " " $5; ai = ai " " $4; ar = ar " " $6; arss = arss " " $7; arepo = arepo " " $8; arr = arr " " $10; ok = ok " " $9; an++ }
    END {
      printf "medians of %d restic and %d arca runs; tar|zstd -1 -T2 median %.2f s; zstd -d|tar -x median %.2f s\n", rn, an, tz, ux
      printf "full backup: %.2fx restic throughput (target >= 4), %.2fx tar|zstd -1 -T2 (target >= 0.9)\n", med(ab) / med(rb), (tz > 0 ? tz / med(as) : 0)
      printf "incremental: %.2fx restic time (target <= 0.5)\n", med(ai) / med(ri)
      printf "restore: %.2fx restic throughput (target >= 4), %.2fx the throughput of zstd -d|tar -x, verified%s\n", med(ar) / med(rr), (ux > 0 ? ux / med(as_r) : 0), ok
      printf "peak RSS (highest of the runs): backup %s vs %s MB, restore %s vs %s MB (target <= restic)\n", max(arss), max(rrss), max(arr), max(rrr)
      printf "repository: %.3fx restic (target <= 1.05)\n", med(arepo) / med(rrepo)
    }' "$1" "$2"
}

run_set() { # run_set LABEL SRC
  echo; echo "######## $1: $2"
  # Rounds: one run of each peer (run_peers.sh), then one of arca, then one of each baseline.
  # Interleaved so that a slow spell of this shared machine lands on every tool alike rather
  # than on whichever ran during it (the peers' CPU seconds for the same work moved by 20%
  # within one run of the peers alone). The first round's directory collects every row.
  local run tz ux res="" r archive=$DATA/baseline.tar.zst
  tar -cf - -C "$2" . | zstd -q -1 -T2 -f -o "$archive"
  for run in $(seq 1 "$RUNS"); do
    echo; echo "== round $run of $RUNS ($(date -u +%H:%M:%S) UTC): peers"
    # Baselines of run_peers.sh itself (openssl speed, hashing) in the first round only.
    SRC=$2 RUNS=1 BASELINES=$([ "$run" = 1 ] && echo "$BASELINES" || echo 0) \
      bash "$SHARED/run_peers.sh"
    r=$(ls -td "$DATA"/results/*/ | head -1)
    if [ -z "$res" ]; then
      res=$r
      : >"$res/tar_zstd.txt"; : >"$res/untar_zstd.txt"
    else
      tail -n +2 "$r/results.tsv" >>"$res/results.tsv"
      tail -n +2 "$r/details.tsv" | awk -F'\t' -v OFS='\t' -v n="$run" '{$2 = n; print}' >>"$res/details.tsv"
      echo "round $run: $r" >>"$res/notes.txt"
    fi
    echo; echo "== round $run of $RUNS: arca, then each baseline"
    SRC=$2 RUNS=1 bash "$HERE/arca_bench.sh" | { if [ "$run" = 1 ]; then cat; else tail -n +2; fi; } \
      | tee -a "$res/arca.tsv"
    tar_zstd "$2" >>"$res/tar_zstd.txt"
    untar_zstd "$archive" >>"$res/untar_zstd.txt"
  done
  rm -f "$archive"
  echo; echo "== peers, every round ($res/results.tsv)"; cat "$res/results.tsv"
  echo; echo "== arca, every round"; cat "$res/arca.tsv"
  tz=$(median <"$res/tar_zstd.txt")
  ux=$(median <"$res/untar_zstd.txt")
  echo "tar | zstd -1 -T2: $(tr '\n' ' ' <"$res/tar_zstd.txt")s; zstd -d | tar -x: $(tr '\n' ' ' <"$res/untar_zstd.txt")s"
  echo; echo "== ratios ($1, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r))"
  ratios "$res/results.tsv" "$res/arca.tsv" "$tz" "$ux" | tee "$res/ratios.txt"
}

echo "== machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), \
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== versions: $(restic version | head -1); $(borg --version); $(zstd --version)"
cpu_probe
trap cpu_probe EXIT
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
