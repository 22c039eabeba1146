#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then runs every test.
#   ./scripts/test.sh
# Needs: the Rust toolchain (cargo). Everything else is installed here: Debian packages with
# apt-get when missing, Python packages into venvs under target/. It starts a real
# KMS- and S3-compatible server (moto: KMS, and S3 with versioning and Object Lock) on a free
# loopback port for the KMS and S3 tests, and a KMIP server (PyKMIP); stops them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

START=$(date +%s)
# Each step with the time since the start, so a slow CI run shows where its time went.
log() { printf '\n== [%s +%ds] %s\n' "$(date -u +%T)" "$(($(date +%s) - START))" "$*"; }

# Debian packages the tests use.
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# unshare (tests/suite/disk_full.rs mounts tiny tmpfs file systems in a private namespace).
command -v unshare >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
mkdir -p target

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# moto (a KMS- and S3-compatible server) and PyKMIP (a KMIP server), each in its own venv.
# They install in the background while fmt and clippy run: pip waits on the network, clippy
# on the CPU.
MOTO_VENV=$ROOT/target/venv-moto
KMIP_VENV=$ROOT/target/venv-kmip
install_venvs() {
  if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
    echo "installing moto[server] into $MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$MOTO_VENV/bin/pip" install -q "moto[server]==5.2.5"
  fi
  if [ ! -x "$KMIP_VENV/bin/pykmip-server" ]; then
    echo "installing pykmip==0.11.0 into $KMIP_VENV"
    python3 -m venv "$KMIP_VENV"
    "$KMIP_VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$KMIP_VENV/bin/pip" install -q "pykmip==0.11.0"
  fi
}
log "installing the Python test servers in the background (log: target/venv-install.log)"
install_venvs >target/venv-install.log 2>&1 &
VENV_PID=$!
PIDS+=("$VENV_PID")

# A clean build gains nothing from incremental compilation's bookkeeping, only its cost.
[ -d target/debug ] || export CARGO_INCREMENTAL=0

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

log "waiting for the Python test servers to be installed"
wait "$VENV_PID" || { cat target/venv-install.log; echo "installing moto or PyKMIP failed"; exit 1; }
cat target/venv-install.log

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

MOTO_PORT=$(free_port)
log "starting moto_server on 127.0.0.1:$MOTO_PORT"
"$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >target/moto.log 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null || { cat target/moto.log; echo "moto_server did not start"; exit 1; }
export ARCA_TEST_KMS_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
# The same server answers S3 (buckets are made per test).
export ARCA_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"

# PyKMIP with mutual TLS: certificates made here.
KMIP_DIR=$ROOT/target/kmip-test
rm -rf "$KMIP_DIR" && mkdir -p "$KMIP_DIR/policies"
(
  cd "$KMIP_DIR"
  cert() { # cert NAME CN EXT CA
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    printf '%b' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$4.crt" -CAkey "$4.key" -CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
  }
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=arca test CA" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.crt -days 2 -subj "/CN=another CA" 2>/dev/null
  cert server localhost 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' ca
  cert client arca-client 'extendedKeyUsage=clientAuth\n' ca
  cert wrong-client intruder 'extendedKeyUsage=clientAuth\n' other-ca
)
KMIP_PORT=$(free_port)
cat >"$KMIP_DIR/server.conf" <<CONF
[server]
hostname=127.0.0.1
port=$KMIP_PORT
certificate_path=$KMIP_DIR/server.crt
key_path=$KMIP_DIR/server.key
ca_path=$KMIP_DIR/ca.crt
auth_suite=TLS1.2
policy_path=$KMIP_DIR/policies
enable_tls_client_auth=True
logging_level=INFO
database_path=$KMIP_DIR/pykmip.db
CONF
log "starting pykmip-server on 127.0.0.1:$KMIP_PORT"
"$KMIP_VENV/bin/pykmip-server" -f "$KMIP_DIR/server.conf" -l "$KMIP_DIR/server.log" >"$KMIP_DIR/stdout.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 150); do
  grep -q "Starting connection service" "$KMIP_DIR/server.log" 2>/dev/null && break
  sleep 0.2
done
grep -q "Starting connection service" "$KMIP_DIR/server.log" || { cat "$KMIP_DIR/stdout.log"; echo "pykmip-server did not start"; exit 1; }
export ARCA_TEST_KMIP_DIR=$KMIP_DIR ARCA_TEST_KMIP_PORT=$KMIP_PORT

log "example: examples/kms_escrow.rs against the KMS server"
EXAMPLE_KEY=$(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$MOTO_VENV/bin/python" -c "
import boto3, sys
c = boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1')
print(c.create_key(KeyUsage='ENCRYPT_DECRYPT')['KeyMetadata']['Arn'])" "$ARCA_TEST_KMS_ENDPOINT")
AWS_ENDPOINT_URL=$ARCA_TEST_KMS_ENDPOINT AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_EC2_METADATA_DISABLED=true cargo run --quiet --example kms_escrow -- "$EXAMPLE_KEY"

log "example: examples/key_lifecycle.rs (rotation, rekey, configuration bundle through arca::ops)"
ARCA_INSECURE_TEST_KDF=1 cargo run --quiet --example key_lifecycle

log "cargo test"
status=0
cargo test --lib --bins --tests --no-fail-fast 2>&1 | tee target/test-output.txt || status=$?
# One closing line for the whole run (after a failure too).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "arca tests: %d passed, %d failed\n", p, f; exit (f > 0) }' target/test-output.txt || { [ "$status" -ne 0 ] || status=1; }
log "done"
exit "$status"
