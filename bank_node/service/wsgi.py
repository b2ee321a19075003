"""The scoring service for gunicorn: ``gunicorn bank_node.service.wsgi:app``.

Settings from the environment: ``FEDFRAUD_STATE_DIR`` (the node's state directory, required),
``FEDFRAUD_BANK_STORE`` (the store's URL, default the SQLite file there) and
``FEDFRAUD_DECISION_THRESHOLD`` (default 0.5).
"""

from __future__ import annotations

import os

from bank_node.service.app import create_app

if "FEDFRAUD_STATE_DIR" not in os.environ:
    raise SystemExit("set FEDFRAUD_STATE_DIR to the bank node's state directory")

app = create_app(os.environ["FEDFRAUD_STATE_DIR"], store_url=os.environ.get("FEDFRAUD_BANK_STORE") or None,
                 config={"DECISION_THRESHOLD": float(os.environ.get("FEDFRAUD_DECISION_THRESHOLD", "0.5"))},
                 watch=True)
