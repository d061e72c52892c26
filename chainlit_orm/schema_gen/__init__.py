"""Everything derived from a model set, as pure functions (no I/O).

* :func:`ddl` / :func:`ddl_statements`: SQL DDL per dialect, compiled by SQLAlchemy, including the
  :func:`version_table` that ``chainlit-orm migrate`` records :data:`SCHEMA_VERSION` in.
* :func:`dynamo_table_spec`: boto3 ``create_table`` arguments for the DynamoDB single table;
  :func:`dynamo_key_mapping`: its key layout for a reader; :func:`cloudformation`: a template
  with production knobs; :func:`pynamodb_models`: PynamoDB item classes (needs the ``dynamodb``
  extra, so it is imported on first use).
* :func:`generated_files`: the checked-in copies under ``generated/``.

Nothing here does I/O: the migrators that apply these derivations live in
:mod:`chainlit_orm.migrations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chainlit_orm.schema_gen.cloudformation import cloudformation
from chainlit_orm.schema_gen.dynamo import (
    DEFAULT_TABLE_NAME,
    GsiSpec,
    dynamo_indexes,
    dynamo_key_mapping,
    dynamo_table_spec,
    list_attributes,
    parse_key,
    render_key,
)
from chainlit_orm.schema_gen.files import generated_files
from chainlit_orm.schema_gen.sql import (
    GENERATED_HEADER,
    SCHEMA_VERSION,
    SUPPORTED_DIALECTS,
    ddl,
    ddl_statements,
    get_dialect,
    tables_for_dialect,
    tombstone_table,
    version_table,
)

if TYPE_CHECKING:
    from chainlit_orm.schema_gen.pynamo import pynamodb_models

__all__ = [
    "DEFAULT_TABLE_NAME",
    "GENERATED_HEADER",
    "SCHEMA_VERSION",
    "SUPPORTED_DIALECTS",
    "GsiSpec",
    "cloudformation",
    "ddl",
    "ddl_statements",
    "dynamo_indexes",
    "dynamo_key_mapping",
    "dynamo_table_spec",
    "generated_files",
    "get_dialect",
    "list_attributes",
    "parse_key",
    "pynamodb_models",
    "render_key",
    "tables_for_dialect",
    "tombstone_table",
    "version_table",
]


def __getattr__(name: str) -> Any:
    # PynamoDB is an optional extra: import it only when its classes are asked for.
    if name == "pynamodb_models":
        from chainlit_orm.schema_gen.pynamo import pynamodb_models

        return pynamodb_models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
