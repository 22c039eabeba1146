"""Creates a symmetric KMS key and alias/arca-backup on an endpoint (LocalStack without Docker).

usage: python create_key.py http://127.0.0.1:4566
"""
import sys

import boto3

ep = sys.argv[1]
kms = boto3.client("kms", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
aliases = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
if "alias/arca-backup" in aliases:
    print("alias/arca-backup exists")
else:
    key = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT", Description="arca backups")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/arca-backup", TargetKeyId=key)
    print(f"created KMS key {key} as alias/arca-backup")
