#!/usr/bin/env bash
# LocalStack (KMS only) without Docker, on 127.0.0.1:${PORT:-4566}, with alias/arca-backup.
#   localstack/run-without-docker.sh            # foreground; Ctrl-C stops it
#   localstack/run-without-docker.sh --test     # start, run arca's KMS tests against it, stop
# localstack-core 2026.3.0 needs Python >= 3.13 in practice (it imports warnings.deprecated, new in
# 3.13, although its metadata says 3.12); it is installed into target/venv-localstack.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-4566}
PY=""
candidates=(python3.14 python3.13 python3)
# pyenv installs that are not the selected version are not on PATH through the shims.
if command -v pyenv >/dev/null; then
  for d in $(ls -d "$(pyenv root)"/versions/3.1[3-9]* 2>/dev/null | sort -rV); do [ -x "$d/bin/python3" ] && candidates+=("$d/bin/python3"); done
fi
for c in "${candidates[@]}"; do
  if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then PY=$c; break; fi
done
[ -n "$PY" ] || { echo "LocalStack needs Python >= 3.13 (apt-get install python3.13-venv, or pyenv)"; exit 1; }
VENV=$ROOT/target/venv-localstack
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ]; then
  "$VENV/bin/pip" install -q "localstack-core[runtime]==2026.3.0" "cbor2<6" "pyopenssl<26" "cryptography<47" service-identity boto3
  touch "$VENV/.installed"
fi
DATA=$(mktemp -d "${TMPDIR:-/tmp}/arca-localstack.XXXXXX")
export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT=$DATA GATEWAY_LISTEN=127.0.0.1:$PORT SERVICES=kms AWS_DEFAULT_REGION=us-east-1
"$VENV/bin/python" -m localstack.runtime.main >"$DATA/localstack.log" 2>&1 &
LS_PID=$!
trap 'kill $LS_PID 2>/dev/null || true; wait $LS_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/_localstack/health" 2>/dev/null | grep -q '"kms": "\(available\|running\)"' && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/_localstack/health" >/dev/null || { tail -20 "$DATA/localstack.log"; echo "LocalStack did not start"; exit 1; }
"$VENV/bin/python" localstack/create_key.py "http://127.0.0.1:$PORT"
echo "LocalStack KMS on http://127.0.0.1:$PORT (log: $DATA/localstack.log)"
if [ "${1:-}" = "--test" ]; then
  # The IAM-enforcing tests start their own moto from target/venv-moto: make sure it exists.
  if [ ! -x target/venv-moto/bin/moto_server ]; then
    python3 -m venv target/venv-moto && target/venv-moto/bin/pip install -q "moto[server]==5.2.5"
  fi
  ARCA_TEST_KMS_ENDPOINT="http://127.0.0.1:$PORT" cargo test --test kms --test kms_faults
else
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test"
  wait $LS_PID
fi
