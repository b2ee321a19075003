"""Run the ``fedfraud`` CLI with the process's clock starting at a given moment, then ticking.

``python tests/e2e/clocked.py 2018-06-10T01:59:50+02:00 consortium scheduler`` is the consortium's
scheduler process as it runs on that night, in real time from there: the end-to-end tests replay
nights of the handbook's 2018 data through real processes with it.
"""

from __future__ import annotations

import sys

import time_machine

if __name__ == "__main__":
    moment, *arguments = sys.argv[1:]
    time_machine.travel(moment, tick=True).start()
    from fedfraud.cli import main

    sys.argv = ["fedfraud", *arguments]
    main()
