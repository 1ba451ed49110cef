"""Finance export plumbing: start a DynamoDB export to S3, and read one back item by item.

An export (AWS's layout) is ``{prefix}/AWSDynamoDB/{export id}/data/*.json.gz``: gzipped lines of
``{"Item": {…DynamoDB JSON…}}``, beside ``manifest-summary.json`` and ``manifest-files.json``.
The same layout is read from S3 or from a local copy of it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chalicelib.adapters.aws import client, from_item

_MARKER = "AWSDynamoDB/"


def start_table_export(table: str, bucket: str, prefix: str, client_token: str | None) -> str:
    """Start a point-in-time export of ``table``; the token makes a redelivered schedule start one export."""
    dynamodb = client("dynamodb")
    table_arn = dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
    kwargs: dict[str, Any] = {
        "TableArn": table_arn,
        "S3Bucket": bucket,
        "S3Prefix": prefix,
        "ExportFormat": "DYNAMODB_JSON",
    }
    if client_token:
        kwargs["ClientToken"] = client_token[:64]
    found = dynamodb.export_table_to_point_in_time(**kwargs)
    return str(found["ExportDescription"]["ExportArn"])


def iter_table_items(table: str) -> Iterator[dict[str, Any]]:
    """Every item of a table. A Scan: only for the local finance export, never on a request path."""
    paginator = client("dynamodb").get_paginator("scan")
    for page in paginator.paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            yield from_item(item)


def iter_export_items(source: str) -> Iterator[dict[str, Any]]:
    """Items of the newest export under ``s3://bucket/prefix/`` or under a local folder."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://") :].partition("/")
        yield from _s3_export(bucket, prefix)
    else:
        yield from _local_export(Path(source))


def _export_id(key: str) -> str:
    after = key.split(_MARKER, 1)[1] if _MARKER in key else ""
    return after.split("/", 1)[0]


def _lines(blob: bytes) -> Iterator[dict[str, Any]]:
    for line in gzip.decompress(blob).decode("utf-8").splitlines():
        if line.strip():
            yield from_item(json.loads(line)["Item"])


def _newest(groups: dict[str, list[Any]], stamps: dict[str, str]) -> list[Any]:
    # Several exports under one prefix: the newest one is the current state of the table.
    if not groups:
        return []
    return groups[max(groups, key=lambda export_id: stamps.get(export_id, ""))]


def _s3_export(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    s3 = client("s3")
    groups: dict[str, list[str]] = {}
    stamps: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            key, export_id = entry["Key"], _export_id(entry["Key"])
            if "/data/" in key and key.endswith(".gz"):
                groups.setdefault(export_id, []).append(key)
                stamps[export_id] = max(stamps.get(export_id, ""), entry["LastModified"].isoformat())
    for key in sorted(_newest(groups, stamps)):
        yield from _lines(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _local_export(root: Path) -> Iterator[dict[str, Any]]:
    groups: dict[str, list[Path]] = {}
    stamps: dict[str, str] = {}
    for path in root.rglob("*.gz"):
        if path.parent.name != "data":
            continue
        export_dir = path.parent.parent
        groups.setdefault(str(export_dir), []).append(path)
        summary = export_dir / "manifest-summary.json"
        stamp = json.loads(summary.read_text()).get("exportTime", "") if summary.exists() else ""
        stamps[str(export_dir)] = stamp or f"{path.stat().st_mtime:020.6f}"
    for path in sorted(_newest(groups, stamps)):
        yield from _lines(path.read_bytes())
