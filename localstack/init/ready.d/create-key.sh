#!/usr/bin/env bash
# Runs inside LocalStack when it is ready: a symmetric key and alias/arca-backup.
set -euo pipefail
if awslocal kms list-aliases --query 'Aliases[].AliasName' --output text | grep -qw alias/arca-backup; then
  echo "alias/arca-backup exists"
  exit 0
fi
key=$(awslocal kms create-key --key-usage ENCRYPT_DECRYPT --key-spec SYMMETRIC_DEFAULT \
  --description "arca backups" --query KeyMetadata.KeyId --output text)
awslocal kms create-alias --alias-name alias/arca-backup --target-key-id "$key"
echo "created KMS key $key as alias/arca-backup"
