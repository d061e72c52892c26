"""A moto server that answers one request at a time: ``python -m tests.lifecycle.serial_moto
PORT``. For the cross-process erasure test on DynamoDB: stock moto's server is threaded, and a
cancelled TransactWriteItems (a refused late write is one) puts back a copy of the whole table
taken when it began, undoing what other requests wrote or deleted meanwhile (the erasure's
deletes among them), which DynamoDB never does. One request at a time, each transaction is
atomic against the others, as on DynamoDB."""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
               threaded=False)
