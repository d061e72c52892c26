"""A custom model set for the schema tests: a tenant column, a table prefix and a schema.

Importable as ``tests.schema.custom_models:MODELS`` so the CLI's ``--models`` can load it.
"""

from __future__ import annotations

from chainlit_orm.models import IndexSpec, ModelSet, ThreadFields
from chainlit_orm.models.entities import DynamoEntityKeys, DynamoIndexKeys
from chainlit_orm.models.modelset import metadata_column


class TenantThread(ThreadFields):
    """Threads with an indexed ``tenant`` column (filled from ``metadata["tenant"]``) and a GSI."""

    __indexes__ = (*ThreadFields.__indexes__, IndexSpec("tenant", ("tenant", "activityAt")))
    __dynamo__ = DynamoEntityKeys(
        pk=ThreadFields.__dynamo__.pk,
        sk=ThreadFields.__dynamo__.sk,
        indexes=(
            *ThreadFields.__dynamo__.indexes,
            DynamoIndexKeys("TenantActivity", "TenantActivityPK", "UserActivitySK",
                            "TENANT#{tenant}", "TS#{activityAt}#{id}"),
        ),
    )
    tenant: str | None = metadata_column("tenant", "tenant")


MODELS = ModelSet.build(thread=TenantThread, prefix="acme_", schema="chat")
