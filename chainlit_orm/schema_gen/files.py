"""The checked-in copies under ``generated/``: file name -> content, computed without I/O.

The CLI writes these files and, with ``--check``, compares them with what is on disk; keeping the
rendering here (not in the CLI) lets tests and other tools compare without touching a disk.
"""

from __future__ import annotations

import json
from typing import Any

from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen.cloudformation import cloudformation
from chainlit_orm.schema_gen.dynamo import dynamo_key_mapping
from chainlit_orm.schema_gen.sql import GENERATED_HEADER, SUPPORTED_DIALECTS, ddl

__all__ = ["generated_files"]


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def generated_files(models: ModelSet = DEFAULT_MODELS) -> dict[str, str]:
    """Every generated file for ``models``, in a stable order.

    ``<dialect>.sql`` for each SQL dialect, ``dynamodb.json`` (the key mapping, with a
    ``_comment`` header key) and ``dynamodb.cfn.json`` (the CloudFormation template, whose
    ``Description`` carries the header; JSON rather than YAML so writing it needs no YAML library).

    Raises:
        SchemaError: the DynamoDB declarations are inconsistent.
    """
    files = {f"{dialect}.sql": ddl(models, dialect) for dialect in SUPPORTED_DIALECTS}
    files["dynamodb.json"] = _json_text({
        "_comment": f"{GENERATED_HEADER} (regenerate with: chainlit-orm generate)",
        **dynamo_key_mapping(models),
    })
    files["dynamodb.cfn.json"] = _json_text(cloudformation(models))
    return files
