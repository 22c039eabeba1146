#!/usr/bin/env bash
# Backup and restore throughput of arca into a local repository and into S3 on loopback
# (moto's server, the one the test suite uses, started here from target/venv-moto; run
# ./scripts/test.sh once to install it), on the same tree, side by side.
#
#   bench/s3.sh                       # /tmp/bench-data/src (the shared dataset, generated if missing)
#   SRC=/path/to/tree bench/s3.sh
#
# Phases per target: full backup, incremental with nothing changed, restore (+ diff -r).
# moto keeps objects in Python memory and answers one request at a time per connection: the
# S3 figures measure arca's S3 path against that server, not what AWS S3 would sustain.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
DATA=${BENCH_DATA:-/tmp/bench-data}
SRC=${SRC:-$DATA/src}
SIZE_MB=${SIZE_MB:-1024}
MOTO=$ROOT/target/venv-moto/bin/moto_server
[ -x "$MOTO" ] || { echo "no $MOTO: run ./scripts/test.sh once (it installs moto)"; exit 1; }
(cd "$ROOT" && cargo build --release --quiet)
ARCA=$ROOT/target/release/arca
[ -d "$SRC" ] || python3 "$SHARED/gen_dataset.py" generate --out "$SRC" --size-mb "$SIZE_MB" --seed 42
BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s+=$1} END{printf "%d", s}')
FILES=$(find "$SRC" -type f | wc -l)
WORK=$(mktemp -d "$DATA/arca-s3-bench.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$MOTO" -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1 && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export ARCA_PASSPHRASE=${BENCH_PASSPHRASE:-bench-passphrase-not-a-secret}
"$ROOT/target/venv-moto/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$PORT').create_bucket(Bucket='arca-bench')"

secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", (b-a)/1e9}'; }
run() { # run TARGET_NAME REPO
  local name=$1 repo=$2 t0 t1 full incr rest
  export ARCA_CATALOG=$WORK/$name/catalog.db
  "$ARCA" init "$repo" >/dev/null
  "$ARCA" job create b --repo "$repo" --source "$SRC" --encryption passphrase >/dev/null 2>&1
  t0=$(date +%s%N); "$ARCA" backup b -q; t1=$(date +%s%N); full=$(secs "$t0" "$t1")
  t0=$(date +%s%N); "$ARCA" backup b -q; t1=$(date +%s%N); incr=$(secs "$t0" "$t1")
  t0=$(date +%s%N); "$ARCA" restore b --target "$WORK/$name/out" -q; t1=$(date +%s%N); rest=$(secs "$t0" "$t1")
  diff -r "$SRC" "$WORK/$name/out" >/dev/null || { echo "$name: restore differs"; exit 1; }
  printf '%-22s %8ss %8.0f MB/s %10ss %8ss %8.0f MB/s\n' "$name" "$full" \
    "$(awk -v b="$BYTES" -v s="$full" 'BEGIN{print b/1e6/s}')" "$incr" "$rest" \
    "$(awk -v b="$BYTES" -v s="$rest" 'BEGIN{print b/1e6/s}')"
}
echo "tree: $SRC ($FILES files, $((BYTES / 1000000)) MB)"
printf '%-22s %9s %13s %11s %9s %13s\n' target "full" "" "incremental" restore ""
run local "$WORK/local/repo"
run s3-loopback-moto "s3://arca-bench/repo"
