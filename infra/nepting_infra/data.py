"""DynamoDB tables and the finance export bucket: everything that holds state."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .settings import DeploymentSettings

S = dynamodb.AttributeType.STRING
N = dynamodb.AttributeType.NUMBER
# Kept when the stack is deleted or replaces them, but removed when the very first deployment
# rolls back: a retry then creates them again instead of failing on "already exists".
KEEP = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
# Tables whose items hold secrets: terminal passphrases (the HMAC key of every message), merchants'
# password hashes and notification passphrases. Encrypted under a key of the deployment's own.
SECRET_TABLES = ("merchants", "terminals")

# DynamoDB writes its exports under this prefix; finance_export may write nothing else.
EXPORT_PREFIX = "exports/"
# Every bucket here: encrypted, never public, TLS only, kept when the stack is deleted.
PRIVATE_BUCKET: dict[str, Any] = {
    "encryption": s3.BucketEncryption.S3_MANAGED,
    "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
    "enforce_ssl": True,
    "removal_policy": KEEP,
}


class Tables(Construct):
    """The six tables, on demand, encrypted, with point-in-time recovery.

    PITR is on for every table, not only transactions: the terminals and merchants tables hold
    enrolment secrets that cannot be recreated, and at this system's sizes PITR costs cents. Those
    two are encrypted with a customer-managed key (``secrets_key``) whose use is logged in
    CloudTrail and granted to exactly the functions that read them; the others with the
    AWS-managed one.
    """

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings
        self.secrets_key = kms.Key(
            self,
            "SecretsKey",
            alias=f"alias/{settings.resource_name('secrets')}",
            description="Encrypts the terminals and merchants tables (passphrases, password hashes)",
            # New key material every year; DynamoDB keeps decrypting with the old one, nothing to re-encrypt.
            enable_key_rotation=True,
            rotation_period=Duration.days(365),
            # The tables' backups (PITR) need it as long as they exist.
            removal_policy=KEEP,
            pending_window=Duration.days(30),
        )

        self.merchants = self._table("merchants", "pk")
        self.terminals = self._table("terminals", "terminal_id")
        self.terminals.add_global_secondary_index(
            index_name="by-merchant",
            partition_key=dynamodb.Attribute(name="merchant_id", type=S),
            sort_key=dynamodb.Attribute(name="terminal_id", type=S),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        # Correlation records and order heads. The stream feeds order_notifications; TTL drops
        # records after the idempotency/look-up retention the application sets in expires_at.
        self.payments = self._table(
            "payments",
            "pk",
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
            time_to_live_attribute="expires_at",
        )
        # The Console's orders listing: order heads per merchant, latest attempt first. Sparse:
        # correlation records carry no updated_at_ms, so only heads are indexed.
        self.payments.add_global_secondary_index(
            index_name="by-merchant-updated",
            partition_key=dynamodb.Attribute(name="merchant_id", type=S),
            sort_key=dynamodb.Attribute(name="updated_at_ms", type=N),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        self.transactions = self._table(
            "transactions",
            "transaction_reference",
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
        )
        for index_name, partition in (
            ("by-merchant-created", "merchant_id"),
            ("by-merchant-order", "merchant_order"),
        ):
            self.transactions.add_global_secondary_index(
                index_name=index_name,
                partition_key=dynamodb.Attribute(name=partition, type=S),
                sort_key=dynamodb.Attribute(name="created_at", type=S),
                projection_type=dynamodb.ProjectionType.ALL,
            )
        self.order_details = self._table("order_details", "merchant_order")
        # The durable IPN inbox: an IPN is stored here before the gateway gets its 200.
        self.ipn = self._table("ipn", "transaction_reference")

        self.by_key: dict[str, dynamodb.Table] = {
            "merchants": self.merchants,
            "terminals": self.terminals,
            "payments": self.payments,
            "transactions": self.transactions,
            "order_details": self.order_details,
            "ipn": self.ipn,
        }

    def _table(
        self,
        key: str,
        partition_key: str,
        *,
        stream: dynamodb.StreamViewType | None = None,
        time_to_live_attribute: str | None = None,
    ) -> dynamodb.Table:
        table = dynamodb.Table(
            self,
            key.replace("_", "-").title().replace("-", ""),
            table_name=self._settings.resource_name(key.replace("_", "-")),
            partition_key=dynamodb.Attribute(name=partition_key, type=S),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            stream=stream,
            time_to_live_attribute=time_to_live_attribute,
            # Off by default: a protected table cannot be deleted by the rollback of a failed first
            # deployment either. Stack deletion keeps the tables anyway (KEEP), and a deleted table's
            # PITR backup stays restorable for 35 days; turn it on once the stage is deployed.
            deletion_protection=self._settings.table_deletion_protection,
            removal_policy=KEEP,
        )
        if key in SECRET_TABLES:
            # Set underneath the L2 table, whose grants would otherwise add kms:ReEncrypt* and
            # kms:GenerateDataKey* for every reader: the stack grants the key explicitly instead,
            # only through DynamoDB (stack.py, _grant_secrets_key).
            cfn = table.node.default_child
            assert isinstance(cfn, dynamodb.CfnTable)
            cfn.add_property_override("SSESpecification.SSEType", "KMS")
            cfn.add_property_override("SSESpecification.KMSMasterKeyId", self.secrets_key.key_arn)
        return table


class ExportBucket(Construct):
    """Finance exports: private, TLS only, versioned, aging into cheaper storage classes."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            **PRIVATE_BUCKET,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365))],
        )
        self.bucket = s3.Bucket(
            self,
            "Exports",
            **PRIVATE_BUCKET,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="exports-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="age-exports",
                    prefix=EXPORT_PREFIX,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(30),
                        ),
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                            transition_after=Duration.days(180),
                        ),
                    ],
                    # Accounting records are kept ten years by default (French commercial code).
                    expiration=Duration.days(settings.export_retention_days),
                    noncurrent_version_expiration=Duration.days(30),
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)
                ),
            ],
        )
