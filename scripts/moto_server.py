"""moto server (the emulator plane's upstream) with two fixes to its DynamoDB and one to its Step
Functions engine, for moto 5.2.5.

Usage: python scripts/moto_server.py [moto_server arguments]   (e.g. -H 127.0.0.1 -p 5000)

1. Every DynamoDB request is atomic. moto's server answers on threads and its DynamoDB backend has
   no lock: a conditional write's check and its write, or a transaction's items, can interleave
   with another request's. DynamoDB itself never lets that happen, and the loop's invariants (one
   conditional transaction per stage) rely on it. One lock around each DynamoDB request restores
   it; other services are untouched.

2. TransactWriteItems no longer copies whole tables. moto deep-copies every table a transaction
   touches, once per item, so that it can roll back: the cost grows with the table (32 ms per
   transaction at 220 items, measured through `tokenops emulator`, and more as a test session
   fills the table). Here the transaction's own items are saved instead and put back if it is
   cancelled, which is the same rollback.

3. A Lambda task reuses its Lambda client. moto's Step Functions engine builds a new boto3 client
   (about 10 ms of Python) and a new connection for every Lambda task it runs: 70 ms of each
   TokenOps run's seven tasks. One client per region is kept instead (boto3 clients are
   thread-safe), so its connections are reused too.

All are patches to moto's internals of the pinned version (scripts/requirements.txt): the script
refuses to start on another version rather than patch what it has not been checked against.
"""

import copy
import logging
import sys
import threading

import moto
from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.server import main
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

CHECKED_VERSION = "5.2.5"

_request_lock = threading.RLock()
_cheap_table_copy = threading.local()


def _atomic_call_action(original):
    def call_action(self):
        with _request_lock:
            return original(self)

    return call_action


class _CopyModule:
    """`copy` as moto.dynamodb.models sees it: a table is not copied inside a patched transaction."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        if isinstance(value, Table) and getattr(_cheap_table_copy, "on", False):
            return value
        return copy.deepcopy(value, memo)


def _touched(backend, transact_items):
    """(table, hash key, range key, saved item or None) for each item a transaction writes."""
    saved = []
    for entry in transact_items:
        op_type, op = next(iter(entry.items()))
        if op_type == "ConditionCheck":
            continue
        table = backend.get_table(op["TableName"])
        attrs = op["Item"] if op_type == "Put" else op["Key"]
        hash_key = DynamoType(attrs[table.hash_key_attr])
        range_key = DynamoType(attrs[table.range_key_attr]) if table.has_range_key else None
        current = table.get_item(hash_key, range_key)
        saved.append((table, hash_key, range_key, copy.deepcopy(current)))
    return saved


def _restore(saved):
    for table, hash_key, range_key, item in reversed(saved):
        if range_key is None:
            if item is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = item
        elif item is None:
            table.items.get(hash_key, {}).pop(range_key, None)
        else:
            table.items[hash_key][range_key] = item


def _item_level_transactions(original):
    def transact_write_items(self, transact_items):
        try:
            saved = _touched(self, transact_items)
        except Exception:
            # Malformed input (no such table, a missing key): moto's own path reports it.
            return original(self, transact_items)
        _cheap_table_copy.on = True
        try:
            return original(self, transact_items)
        except Exception:
            _restore(saved)
            raise
        finally:
            _cheap_table_copy.on = False

    return transact_write_items


def _reused_clients(original):
    clients = {}
    lock = threading.Lock()

    def boto_client_for(region, service, state_credentials=None):
        # moto ignores state_credentials (every client uses its fixed test keys).
        with lock:
            client = clients.get((region, service))
            if client is None:
                client = clients[(region, service)] = original(region, service)
        return client

    return boto_client_for


def patch():
    if moto.__version__ != CHECKED_VERSION:
        sys.exit(
            f"scripts/moto_server.py patches moto {CHECKED_VERSION}, found {moto.__version__}: "
            "check the patches against it, then update CHECKED_VERSION"
        )
    DynamoHandler.call_action = _atomic_call_action(DynamoHandler.call_action)
    dynamodb_models.copy = _CopyModule()
    DynamoDBBackend.transact_write_items = _item_level_transactions(
        DynamoDBBackend.transact_write_items
    )
    lambda_eval_utils.boto_client_for = _reused_clients(lambda_eval_utils.boto_client_for)


if __name__ == "__main__":
    patch()
    # One access-log line per request is most of what moto writes; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sys.exit(main(sys.argv[1:]))
