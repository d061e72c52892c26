"""A CloudFormation template for the single table, with production knobs as Parameters.

The table's keys, attribute definitions and GSIs are exactly :func:`dynamo_table_spec`'s; what a
deployment tunes is a Parameter, so one checked-in template serves every environment:

* ``BillingMode``: ``PAY_PER_REQUEST`` (default) or ``PROVISIONED`` with ``ReadCapacityUnits`` /
  ``WriteCapacityUnits`` applied to the table and to every GSI (a GSI with less write capacity
  than its table throttles the table's writes).
* TTL is enabled on :data:`~chainlit_orm.schema_gen.dynamo.TTL_ATTRIBUTE` (``expiresAt``), the
  attribute a layer with ``retention=`` writes on thread items. Enabling it expires nothing by
  itself: an item without the attribute never expires, so data is deleted only where the app
  asked for retention. (Files are not DynamoDB items: ``chainlit-orm purge`` sweeps the stored
  objects whose thread is gone.)
* ``PointInTimeRecovery`` (default on), ``DeletionProtection`` (default on), and server-side
  encryption with the AWS-managed KMS key (``SSEEnabled``) or a customer key (``KMSMasterKeyId``).
* ``StreamViewType``: empty (default) for no stream, else the view type of a DynamoDB stream.

The resource also has ``DeletionPolicy``/``UpdateReplacePolicy: Retain``: deleting or replacing
the stack must never drop the chat history with it.
"""

from __future__ import annotations

from typing import Any

from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen.dynamo import DEFAULT_TABLE_NAME, TTL_ATTRIBUTE, dynamo_table_spec
from chainlit_orm.schema_gen.sql import GENERATED_HEADER, SCHEMA_VERSION

__all__ = ["TABLE_RESOURCE", "cloudformation"]

#: Logical id of the table resource in the template.
TABLE_RESOURCE = "ChainlitTable"

_NO_VALUE = {"Ref": "AWS::NoValue"}


def _ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def _if(condition: str, then: Any, otherwise: Any = _NO_VALUE) -> dict[str, Any]:
    return {"Fn::If": [condition, then, otherwise]}


def _flag(description: str, default: str = "true") -> dict[str, Any]:
    return {
        "Type": "String",
        "AllowedValues": ["true", "false"],
        "Default": default,
        "Description": description,
    }


def cloudformation(
    models: ModelSet = DEFAULT_MODELS,
    *,
    default_table_name: str = DEFAULT_TABLE_NAME,
    description: str | None = None,
) -> dict[str, Any]:
    """A CloudFormation template (as a dict, JSON-serialisable) creating the set's table.

    Args:
        models: the model set whose ``__dynamo__`` declarations give keys and indexes.
        default_table_name: default of the ``TableName`` parameter.
        description: the template's Description; by default it says the file is generated.

    Raises:
        SchemaError: the declarations are inconsistent, or ``default_table_name`` is invalid.
    """
    spec = dynamo_table_spec(models, default_table_name)
    throughput = _if(
        "IsProvisioned",
        {"ReadCapacityUnits": _ref("ReadCapacityUnits"),
         "WriteCapacityUnits": _ref("WriteCapacityUnits")},
    )
    indexes = [{**index, "ProvisionedThroughput": throughput}
               for index in spec.get("GlobalSecondaryIndexes", [])]
    properties: dict[str, Any] = {
        "TableName": _ref("TableName"),
        "BillingMode": _ref("BillingMode"),
        "ProvisionedThroughput": throughput,
        "AttributeDefinitions": spec["AttributeDefinitions"],
        "KeySchema": spec["KeySchema"],
    }
    if indexes:
        properties["GlobalSecondaryIndexes"] = indexes
    properties.update({
        "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        "PointInTimeRecoverySpecification": {
            "PointInTimeRecoveryEnabled": _if("PointInTimeRecoveryOn", True, False)
        },
        "SSESpecification": {
            "SSEEnabled": _if("UseKms", True, False),
            "SSEType": _if("UseKms", "KMS"),
            "KMSMasterKeyId": _if("HasCustomerKey", _ref("KMSMasterKeyId")),
        },
        "DeletionProtectionEnabled": _if("DeletionProtectionOn", True, False),
        "StreamSpecification": _if("HasStream", {"StreamViewType": _ref("StreamViewType")}),
    })
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": description or (
            f"Chainlit single table for chainlit-orm (schema version {SCHEMA_VERSION}); "
            f"{GENERATED_HEADER} (regenerate with: chainlit-orm generate)"
        ),
        "Parameters": {
            "TableName": {
                "Type": "String",
                "Default": default_table_name,
                "AllowedPattern": "[a-zA-Z0-9_.-]{3,255}",
                "Description": "Name of the DynamoDB table (DynamoDataLayer(table_name=...)).",
            },
            "BillingMode": {
                "Type": "String",
                "AllowedValues": ["PAY_PER_REQUEST", "PROVISIONED"],
                "Default": "PAY_PER_REQUEST",
                "Description": "On-demand, or provisioned with the capacity parameters below.",
            },
            "ReadCapacityUnits": {
                "Type": "Number", "Default": 5, "MinValue": 1,
                "Description": "PROVISIONED only: read capacity of the table and of each GSI.",
            },
            "WriteCapacityUnits": {
                "Type": "Number", "Default": 5, "MinValue": 1,
                "Description": "PROVISIONED only: write capacity of the table and of each GSI.",
            },
            "PointInTimeRecovery": _flag("Continuous backups (point-in-time recovery)."),
            "DeletionProtection": _flag("Refuse DeleteTable while enabled."),
            "SSEEnabled": _flag(
                "Encrypt with a KMS key (the AWS-managed one unless KMSMasterKeyId is set); "
                "false uses the AWS-owned key."
            ),
            "KMSMasterKeyId": {
                "Type": "String", "Default": "",
                "Description": "Customer-managed KMS key id, ARN or alias; empty uses the "
                "AWS-managed key. Needs SSEEnabled=true.",
            },
            "StreamViewType": {
                "Type": "String",
                "AllowedValues": ["", "KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"],
                "Default": "",
                "Description": "DynamoDB stream view type; empty disables the stream.",
            },
        },
        "Conditions": {
            "IsProvisioned": {"Fn::Equals": [_ref("BillingMode"), "PROVISIONED"]},
            "PointInTimeRecoveryOn": {"Fn::Equals": [_ref("PointInTimeRecovery"), "true"]},
            "DeletionProtectionOn": {"Fn::Equals": [_ref("DeletionProtection"), "true"]},
            "UseKms": {"Fn::Equals": [_ref("SSEEnabled"), "true"]},
            "HasCustomerKey": {"Fn::And": [
                {"Condition": "UseKms"},
                {"Fn::Not": [{"Fn::Equals": [_ref("KMSMasterKeyId"), ""]}]},
            ]},
            "HasStream": {"Fn::Not": [{"Fn::Equals": [_ref("StreamViewType"), ""]}]},
        },
        "Resources": {
            TABLE_RESOURCE: {
                "Type": "AWS::DynamoDB::Table",
                "DeletionPolicy": "Retain",
                "UpdateReplacePolicy": "Retain",
                "Properties": properties,
            }
        },
        "Outputs": {
            "TableName": {"Description": "Name of the table.", "Value": _ref(TABLE_RESOURCE)},
            "TableArn": {
                "Description": "ARN of the table (for IAM policies).",
                "Value": {"Fn::GetAtt": [TABLE_RESOURCE, "Arn"]},
            },
            "StreamArn": {
                "Condition": "HasStream",
                "Description": "ARN of the table's stream.",
                "Value": {"Fn::GetAtt": [TABLE_RESOURCE, "StreamArn"]},
            },
        },
    }
