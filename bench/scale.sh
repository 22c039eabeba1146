#!/usr/bin/env bash
# How arca's time and memory grow with the number of files: trees of N small files
# (default 50,000, 500,000 and 2,000,000), each backed up in full, backed up again unchanged
# (incremental), and restored; wall time and peak RSS per phase, one line per N.
#
#   bench/scale.sh                  # N in 50000 500000 2000000
#   bench/scale.sh 50000 200000     # other sizes
#   STREAM_GIB=20 bench/scale.sh    # then a 20 GiB generated stream (bench/stream.sh)
#
# The trees are generated (say how: 1,000 files per directory, each file 100 to 4,195 bytes
# of seeded pseudo-random text, so about 2 KiB on average: 2M files are ~4.3 GB) under
# ${SCALE_DATA:-/tmp/arca-scale}; they need that much disk and as many free inodes. ARCA picks
# the binary (default target/release/arca, built if missing). Each tree is read once before
# its full backup (warm page cache, as bench/compare.sh measures): otherwise the full backup
# times the disk whenever the cache was evicted since the tree was written (a cold read of the
# 500k tree took 3m53s on the reference VM, against 13-16 s for the backup from a warm cache).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCA=${ARCA:-$PWD/target/release/arca}
[ -x "$ARCA" ] || cargo build --release --quiet
DATA=${SCALE_DATA:-/tmp/arca-scale}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(50000 500000 2000000)
mkdir -p "$DATA"
export ARCA_CATALOG=$DATA/catalog.db

generate() { # generate N DIR
  python3 - "$1" "$2" <<'PY'
import os, random, sys
n, root = int(sys.argv[1]), sys.argv[2]
rng = random.Random(n)
words = [("w%05d" % i).encode() for i in range(5000)]
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    size = 100 + rng.randrange(4096)
    body = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
    with open(os.path.join(d, "f%07d.txt" % i), "wb") as f:
        f.write(body)
PY
}

phase() { # phase NAME cmd... -> "seconds rss_mib"
  /usr/bin/time -f "%e %M" -o "$DATA/$1.time" "${@:2}" >/dev/null
  read -r s kib <"$DATA/$1.time"
  echo "$s $((kib / 1024))"
}

printf 'files\tfull_s\tfull_rss_MiB\tincr_s\tincr_rss_MiB\tincr/full\trestore_s\trestore_rss_MiB\n'
for n in "${SIZES[@]}"; do
  src=$DATA/src-$n
  [ -d "$src" ] || generate "$n" "$src"
  find "$src" -type f -print0 | xargs -0 cat >/dev/null
  rm -rf "$DATA/repo" "$DATA/out" "$ARCA_CATALOG" "$DATA/key"
  "$ARCA" -q init "$DATA/repo" >/dev/null
  "$ARCA" -q keyfile generate --out "$DATA/key" >/dev/null
  "$ARCA" -q --key-file "$DATA/key" job create s --repo "$DATA/repo" --source "$src" --encryption key >/dev/null
  read -r fs fr < <(phase full "$ARCA" -q --key-file "$DATA/key" backup s)
  read -r is ir < <(phase incr "$ARCA" -q --key-file "$DATA/key" backup s)
  read -r rs rr < <(phase restore "$ARCA" -q --key-file "$DATA/key" restore s --target "$DATA/out")
  printf '%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n' "$n" "$fs" "$fr" "$is" "$ir" "$(echo "$is / $fs" | bc -l)" "$rs" "$rr"
  rm -rf "$DATA/out"
done
if [ -n "${STREAM_GIB:-}" ]; then
  bash bench/stream.sh "$STREAM_GIB"
fi
