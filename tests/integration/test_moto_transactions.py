"""The local stack's moto transactions roll back item by item instead of copying whole tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local.moto_server import serialize_dynamodb

TABLE = "bench-transactions"


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    serialize_dynamodb()
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-3")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        yield client


def put(pk: str, value: str, new_only: bool = True) -> dict[str, Any]:
    condition = {"ConditionExpression": "attribute_not_exists(pk)"} if new_only else {}
    return {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk}, "v": {"S": value}}, **condition}}


def stream_records(client: Any) -> list[dict[str, Any]]:
    streams = boto3.client("dynamodbstreams", region_name="eu-west-3")
    arn = client.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    return streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]


def test_a_failed_transaction_undoes_its_earlier_writes_and_their_stream_records(dynamodb: Any) -> None:
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "taken"}, "v": {"S": "first"}})
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "kept"}, "v": {"S": "before"}})

    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(
            TransactItems=[put("fresh", "new"), put("kept", "after", new_only=False), put("taken", "second")]
        )

    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "fresh"}})
    assert dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "kept"}})["Item"]["v"] == {"S": "before"}
    assert dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "taken"}})["Item"]["v"] == {"S": "first"}
    assert len(stream_records(dynamodb)) == 2, "only the two puts before the transaction"


def test_a_successful_transaction_writes_every_item(dynamodb: Any) -> None:
    dynamodb.transact_write_items(TransactItems=[put("a", "1"), put("b", "2")])

    assert dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "a"}})["Item"]["v"] == {"S": "1"}
    assert dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "b"}})["Item"]["v"] == {"S": "2"}
    assert len(stream_records(dynamodb)) == 2
