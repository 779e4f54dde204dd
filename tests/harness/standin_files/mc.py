"""The S3 stand-in's ``mc``: the MinIO client commands the compose file runs, against moto's S3 and IAM APIs.

Implemented: ``alias set NAME URL KEY SECRET``, ``mb [--ignore-existing] ALIAS/BUCKET``, ``ls ALIAS/BUCKET``,
``ready ALIAS``, ``admin policy create ALIAS NAME FILE``, ``admin user add ALIAS KEY SECRET`` and ``admin policy
attach ALIAS POLICY --user KEY``. Aliases live in ``$MC_CONFIG_DIR/config.json`` (default ``~/.mc``), readable
by their owner only; ``local`` is http://127.0.0.1:9000, as in the MinIO image. Users and policies are created in
moto's IAM (a policy is replaced when it exists); moto does not enforce them, and cannot give a user a chosen
access key, so a user is recorded by name and its secret is not kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

REGION = "us-east-1"


def config_path() -> Path:
    return Path(os.environ.get("MC_CONFIG_DIR", str(Path.home() / ".mc"))) / "config.json"


def aliases() -> dict[str, dict[str, str]]:
    path = config_path()
    stored: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return {"local": {"url": "http://127.0.0.1:9000", "key": "local", "secret": "local"}, **stored}


def client(service: str, alias: str) -> Any:
    try:
        found = aliases()[alias]
    except KeyError:
        sys.exit(f"mc: no alias {alias!r} (mc alias set first)")
    return boto3.client(
        service,
        endpoint_url=found["url"],
        aws_access_key_id=found["key"],
        aws_secret_access_key=found["secret"],
        region_name=REGION,
    )


def target(value: str) -> tuple[str, str]:
    alias, _, bucket = value.partition("/")
    return alias, bucket.strip("/")


def policy_arn(iam: Any, name: str) -> str:
    for page in iam.get_paginator("list_policies").paginate(Scope="Local"):
        for policy in page["Policies"]:
            if policy["PolicyName"] == name:
                return str(policy["Arn"])
    sys.exit(f"mc: no policy {name!r}")


def main(argv: list[str]) -> int:
    match argv:
        case ["alias", "set", name, url, key, secret]:
            path = config_path()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            stored = {k: v for k, v in aliases().items() if k != "local"}
            stored[name] = {"url": url, "key": key, "secret": secret}
            path.touch(mode=0o600)
            path.write_text(json.dumps(stored))
            print(f"Added `{name}` successfully.")
        case ["ready", alias]:
            url = aliases()[alias]["url"]
            for _ in range(30):
                try:
                    with urllib.request.urlopen(url, timeout=2):
                        return 0
                except OSError:
                    time.sleep(1)
            return 1
        case ["mb", *flags, place] if set(flags) <= {"--ignore-existing"}:
            alias, bucket = target(place)
            try:
                client("s3", alias).create_bucket(Bucket=bucket)
            except ClientError as error:
                code = error.response["Error"]["Code"]
                if not (flags and code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}):
                    raise
            print(f"Bucket created successfully `{place}`.")
        case ["ls", place]:
            alias, bucket = target(place)
            for item in client("s3", alias).list_objects_v2(Bucket=bucket).get("Contents", []):
                print(item["Key"])
        case ["admin", "policy", "create", alias, name, file]:
            iam = client("iam", alias)
            document = Path(file).read_text()
            json.loads(document)  # mc refuses a policy that is not JSON
            try:
                iam.create_policy(PolicyName=name, PolicyDocument=document)
            except ClientError as error:
                if error.response["Error"]["Code"] != "EntityAlreadyExists":
                    raise
                arn = policy_arn(iam, name)
                for version in iam.list_policy_versions(PolicyArn=arn)["Versions"]:
                    if not version["IsDefaultVersion"]:
                        iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
                iam.create_policy_version(PolicyArn=arn, PolicyDocument=document, SetAsDefault=True)
            print(f"Created policy `{name}` successfully.")
        case ["admin", "user", "add", alias, key, _secret]:
            iam = client("iam", alias)
            try:
                iam.create_user(UserName=key)
            except ClientError as error:
                if error.response["Error"]["Code"] != "EntityAlreadyExists":
                    raise
            print(f"Added user `{key}` successfully.")
        case ["admin", "policy", "attach", alias, name, "--user", key]:
            iam = client("iam", alias)
            arn = policy_arn(iam, name)
            attached = iam.list_attached_user_policies(UserName=key)["AttachedPolicies"]
            if any(policy["PolicyArn"] == arn for policy in attached):
                print(f"mc: policy {name} is already attached to {key}", file=sys.stderr)
                return 1
            iam.attach_user_policy(UserName=key, PolicyArn=arn)
            print(f"Attached policy `{name}` to user `{key}`.")
        case _:
            print(f"mc (stand-in): not implemented: {' '.join(argv)}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
