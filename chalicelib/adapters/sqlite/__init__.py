"""The local stack's embedded store: SQLite in WAL mode behind the same ports as the DynamoDB adapters.

Never imported on Lambda's path: only ``local/`` and the admin commands (``--data-dir``) build it.
"""
