"""Small read-only queries over a synthesized CloudFormation template (a plain dict)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Template = dict[str, Any]
Statement = dict[str, Any]

PREFIX = "nepting-cloud-api-prod-"


def resources(template: Template, type_: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def props(template: Template, logical_id: str) -> dict[str, Any]:
    result: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return result


def logical_id_by_property(template: Template, type_: str, prop: str, value: str) -> str:
    found = [lid for lid, r in resources(template, type_).items() if r["Properties"].get(prop) == value]
    assert len(found) == 1, f"expected one {type_} with {prop}={value!r}, found {found}"
    return found[0]


def table_id(template: Template, short: str) -> str:
    return logical_id_by_property(template, "AWS::DynamoDB::Table", "TableName", PREFIX + short)


def queue_id(template: Template, short: str) -> str:
    return logical_id_by_property(template, "AWS::SQS::Queue", "QueueName", PREFIX + short)


def short_names(template: Template) -> dict[str, str]:
    """Logical id -> short name (``payments``, ``ipn-dlq``) of every named table and queue."""
    names = {}
    for type_, prop in (("AWS::DynamoDB::Table", "TableName"), ("AWS::SQS::Queue", "QueueName")):
        for lid, r in resources(template, type_).items():
            names[lid] = r["Properties"][prop].removeprefix(PREFIX)
    return names


def referenced_ids(value: Any) -> Iterator[str]:
    """Logical ids a value points at through Ref or Fn::GetAtt, however deeply nested."""
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            yield target[0] if isinstance(target, list) else target.split(".")[0]
        for v in value.values():
            yield from referenced_ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from referenced_ids(v)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_of_function(template: Template, function_id: str) -> str:
    role = props(template, function_id)["Role"]
    assert isinstance(role, dict) and "Fn::GetAtt" in role, f"{function_id} role is not one of ours: {role}"
    return str(role["Fn::GetAtt"][0])


def statements_of_role(template: Template, role_id: str) -> list[Statement]:
    found: list[Statement] = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"].get("Roles", []):
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    for inline in props(template, role_id).get("Policies", []):
        found.extend(inline["PolicyDocument"]["Statement"])
    return found


def actions(statement: Statement) -> list[str]:
    return [str(a) for a in as_list(statement["Action"])]


def targets_of(template: Template, statements: list[Statement], action: str) -> set[str]:
    """Short names of the tables/queues that statements allowing ``action`` point at."""
    names = short_names(template)
    return {
        names[lid]
        for s in statements
        if s["Effect"] == "Allow" and action in actions(s)
        for lid in referenced_ids(s["Resource"])
        if lid in names
    }
