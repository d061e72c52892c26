"""chainlit-orm demo on DynamoDB: the demo app of ``examples/app.py`` with its chat history in one
DynamoDB table (:class:`chainlit_orm.DynamoDataLayer`) and its files in S3
(:class:`chainlit_orm.FsspecStorage`). The handlers (login, chat, sharing) are ``app.py``'s,
imported from it; only the data layer differs.

On AWS::

    export CHAINLIT_ORM_DATABASE_URL='dynamodb://chainlit-demo?region=eu-west-1'
    export CHAINLIT_ORM_STORAGE_URL='s3://my-bucket/chainlit-files'
    chainlit-orm migrate "$CHAINLIT_ORM_DATABASE_URL"      # creates the table (or upgrades one
                                                            # made from Chainlit's docs)
    CHAINLIT_APP_ROOT=examples chainlit run examples/app_dynamodb.py --headless

Credentials come from the standard AWS chain (environment, ``AWS_PROFILE``, instance or task
role); the URL never carries them. The IAM principal needs ``dynamodb:DescribeTable``,
``GetItem``, ``Query``, ``Scan`` (only for the unused list of every user's threads),
``UpdateItem``, ``PutItem``, ``DeleteItem``, ``BatchGetItem``, ``BatchWriteItem`` and
``TransactWriteItems`` on the table and its indexes, and ``s3:PutObject``, ``GetObject``,
``DeleteObject`` on the prefix.

Locally, against moto (no AWS account; moto serves both DynamoDB and S3), from the repository
root::

    .venv/bin/moto_server -H 127.0.0.1 -p 5055 &          # or: bash scripts/services.sh
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
    export AWS_ENDPOINT_URL_S3=http://127.0.0.1:5055
    export CHAINLIT_ORM_DATABASE_URL='dynamodb://chainlit-demo?region=us-east-1&endpoint_url=http://127.0.0.1:5055'
    export CHAINLIT_ORM_STORAGE_URL='s3://chainlit-demo/files'
    .venv/bin/python -c "import boto3; boto3.client('s3').create_bucket(Bucket='chainlit-demo')"
    .venv/bin/chainlit-orm migrate "$CHAINLIT_ORM_DATABASE_URL"
    CHAINLIT_APP_ROOT=examples .venv/bin/chainlit run examples/app_dynamodb.py --headless

then log in as ``alice`` / ``alice-pass`` or ``bob`` / ``bob-pass`` (see ``app.py``). Without
``CHAINLIT_ORM_DATABASE_URL`` the demo uses ``dynamodb://chainlit-demo`` in the default region;
without ``CHAINLIT_ORM_STORAGE_URL`` files go to ``examples/.data/files`` on local disk.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import chainlit as cl

import chainlit_orm
from chainlit_orm.errors import ConfigurationError, mask_url

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "dynamodb://chainlit-demo"

os.environ.setdefault("CHAINLIT_ORM_DATABASE_URL", DEFAULT_URL)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import app as demo  # noqa: E402 - registers the demo's handlers; reads the URL set above


@cl.data_layer
def data_layer() -> chainlit_orm.DynamoDataLayer:
    """Replaces ``app.py``'s SQL layer: the table and region come from the URL, the storage from
    ``CHAINLIT_ORM_STORAGE_URL`` (``s3://bucket/prefix``)."""
    url = demo.database_url()
    if not url.startswith("dynamodb://"):
        raise ConfigurationError(
            f"examples/app_dynamodb.py needs a dynamodb:// URL, got CHAINLIT_ORM_DATABASE_URL="
            f"{mask_url(url)} (use examples/app.py for SQL)")
    storage = chainlit_orm.FsspecStorage(demo.storage_url())
    layer = chainlit_orm.from_env({"CHAINLIT_ORM_DATABASE_URL": url}, storage=storage)
    assert isinstance(layer, chainlit_orm.DynamoDataLayer)
    return layer
