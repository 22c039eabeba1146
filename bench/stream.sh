#!/usr/bin/env bash
# A large generated stream through `arca backup --stdin` and back (`restore --stream`),
# measuring wall time and peak memory (max RSS) of each, then comparing the bytes.
#
#   bench/stream.sh [GIB]          # default 20 (GiB)
#
# The data is incompressible (AES-CTR keystream from openssl), so it needs about 2 x GIB of
# free disk under ${TMPDIR:-/tmp} (the repository and the restored file). ARCA=path/to/arca
# picks the binary (default: target/release/arca, built if missing). BACKUP_ONLY=1 skips the
# restore (then GIB of disk is enough).
set -euo pipefail
GIB=${1:-20}
cd "$(dirname "$0")/.."
ARCA=${ARCA:-$PWD/target/release/arca}
if [ ! -x "$ARCA" ]; then
  cargo build --release --quiet
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/arca-stream.XXXXXX")
trap 'rm -rf "$W"' EXIT
export ARCA_CATALOG=$W/catalog.db
gen() {
  # openssl ends with SIGPIPE when head has enough: not a failure.
  { openssl enc -aes-128-ctr -nosalt -pass pass:arca-stream-bench -pbkdf2 -in /dev/zero 2>/dev/null || true; } |
    head -c $((GIB << 30))
}
"$ARCA" -q init "$W/repo" >/dev/null
"$ARCA" -q keyfile generate --out "$W/key" >/dev/null
"$ARCA" -q --key-file "$W/key" job create s --repo "$W/repo" --source "$W" --encryption key >/dev/null
gen | /usr/bin/time -f "%M %e" -o "$W/backup.time" \
  "$ARCA" -q --key-file "$W/key" backup s --stdin --stdin-name dump.bin >/dev/null
read -r b_kib b_s <"$W/backup.time"
mib=$((GIB << 10))
printf '%s GiB stream, %s cores\n' "$GIB" "$(nproc)"
printf 'backup:  %6.1f s  %7.0f MiB/s  max RSS %5d MiB\n' "$b_s" "$(echo "$mib / $b_s" | bc -l)" $((b_kib / 1024))
if [ "${BACKUP_ONLY:-0}" = 1 ]; then exit 0; fi
/usr/bin/time -f "%M %e" -o "$W/restore.time" \
  "$ARCA" -q --key-file "$W/key" restore s --stream dump.bin --target "$W/out" >/dev/null
if gen | cmp -s - "$W/out/dump.bin"; then same=identical; else same=DIFFERENT; fi
read -r r_kib r_s <"$W/restore.time"
printf 'restore: %6.1f s  %7.0f MiB/s  max RSS %5d MiB\n' "$r_s" "$(echo "$mib / $r_s" | bc -l)" $((r_kib / 1024))
printf 'restored bytes: %s\n' "$same"
[ "$same" = identical ]
