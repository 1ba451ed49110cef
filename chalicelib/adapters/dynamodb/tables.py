"""Key schemas of every DynamoDB table, in one place.

infra/ declares the same tables for AWS (its tests compare against this); the local stack and the
tests create them in moto from here.
"""

from __future__ import annotations

from typing import Any

from chalicelib.adapters.aws import client
from chalicelib.config import Settings

# setting name -> (partition key, [(index name, partition key, sort key)], stream, ttl attribute)
TABLES: dict[str, dict[str, Any]] = {
    "merchants_table": {"key": "pk", "indexes": [], "stream": False, "ttl": None},
    "terminals_table": {
        "key": "terminal_id",
        "indexes": [("by-merchant", "merchant_id", "terminal_id")],
        "stream": False,
        "ttl": None,
    },
    # Order heads listed per merchant, latest attempt first; correlation records have no updated_at_ms.
    "payments_table": {
        "key": "pk",
        "indexes": [("by-merchant-updated", "merchant_id", "updated_at_ms")],
        "stream": True,
        "ttl": "expires_at",
    },
    # Console transactions: listed per merchant by date, or per order (merchant_order = "{merchant}#{order}").
    "transactions_table": {
        "key": "transaction_reference",
        "indexes": [
            ("by-merchant-created", "merchant_id", "created_at"),
            ("by-merchant-order", "merchant_order", "created_at"),
        ],
        "stream": True,
        "ttl": None,
    },
    "order_details_table": {"key": "merchant_order", "indexes": [], "stream": False, "ttl": None},
    # The durable IPN inbox: an IPN is stored here before the gateway gets its 200.
    "ipn_table": {"key": "transaction_reference", "indexes": [], "stream": False, "ttl": None},
}


# Key attributes that are numbers; every other key attribute is a string.
NUMBER_ATTRIBUTES = frozenset({"updated_at_ms"})


def create_tables(settings: Settings) -> list[str]:
    """Create every table that does not exist yet; returns the names created."""
    dynamodb = client("dynamodb")
    existing = set(dynamodb.list_tables().get("TableNames", []))
    created = []
    for setting, spec in TABLES.items():
        name = getattr(settings, setting)
        if name in existing:
            continue
        attributes = {spec["key"]}
        indexes = []
        for index_name, partition, sort in spec["indexes"]:
            attributes.update({partition, sort})
            indexes.append(
                {
                    "IndexName": index_name,
                    "KeySchema": [
                        {"AttributeName": partition, "KeyType": "HASH"},
                        {"AttributeName": sort, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            )
        kwargs: dict[str, Any] = {
            "TableName": name,
            "KeySchema": [{"AttributeName": spec["key"], "KeyType": "HASH"}],
            "AttributeDefinitions": [
                {"AttributeName": a, "AttributeType": "N" if a in NUMBER_ATTRIBUTES else "S"}
                for a in sorted(attributes)
            ],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if indexes:
            kwargs["GlobalSecondaryIndexes"] = indexes
        if spec["stream"]:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
        dynamodb.create_table(**kwargs)
        if spec["ttl"]:
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec["ttl"]}
            )
        created.append(name)
    return created
