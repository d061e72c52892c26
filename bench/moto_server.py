"""moto's server for the bench, with one emulator artifact taken out: TransactWriteItems' rollback.

moto 5 backs up a transaction by ``copy.deepcopy`` of every table it touches, before it runs, and
on failure puts the copy back. At the bench's table sizes that is 0.5-1.5 s per transaction, and
it grows with the table, which says nothing about DynamoDB (whose cost for a transaction is its
items). It also loses concurrent writers' items on rollback (the whole table is replaced).

Here the backup is of the items the transaction names, taken just before it runs, and a failed
transaction writes exactly those back. The rest is moto's code, unchanged: conditions, the
cancellation reasons, index maintenance. Only the chainlit-orm DynamoDB target sends transactions
(a user message bumps its thread in the same TransactWriteItems); nothing else changes.

Run as ``python -m bench.moto_server -H 127.0.0.1 -p PORT`` (moto_server's own arguments).
"""

from __future__ import annotations

import copy
import sys
import types
from typing import Any

from moto.dynamodb import models
from moto.dynamodb.models.table import Table

_deepcopy = copy.deepcopy


def _copy_all_but_tables(value: Any, memo: Any = None) -> Any:
    return value if isinstance(value, Table) else _deepcopy(value, memo)


_original = models.DynamoDBBackend.transact_write_items


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    backups: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        name = op.get("TableName")
        if name not in self.tables:
            continue  # moto's own code reports it
        table = self.tables[name]
        if "Key" in op:
            key = op["Key"]
        else:
            item = op.get("Item", {})
            key = {a: item[a] for a in (table.hash_key_attr, table.range_key_attr)
                   if a is not None and a in item}
        try:
            current = self.get_item(name, key)
        except Exception:
            continue  # a malformed key: moto's own code reports it
        backups.append((name, key, None if current is None
                        else _deepcopy(current.to_json()["Attributes"])))
    try:
        _original(self, transact_items)
    except Exception:
        for name, key, attributes in reversed(backups):
            if attributes is None:
                self.delete_item(name, key)
            else:
                self.put_item(name, attributes)
        raise


models.copy = types.SimpleNamespace(deepcopy=_copy_all_but_tables, copy=copy.copy)  # type: ignore[assignment]
models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
