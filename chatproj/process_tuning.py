"""How the long-lived server processes run Python's garbage collector and GIL.

Measured under the benchmark's load (docs/PERFORMANCE.md, "Fourth round"):

- **The GIL's turns.** A web process runs its sockets on the event loop's thread and
  its group commits on another; a worker child runs its task, the Kafka client's
  network thread and the channel-layer loop. A thread that released the GIL for a
  moment (a SQLite step, a socket read) waits for a busy thread to give it back, up to
  the switch interval (5 ms by default), every time: a transaction of a few statements
  waited several turns. At 1 ms, p99 send→ack at 360 msgs/s fell from 34–89 ms
  (mean 63) to 34–56 ms (mean 45) over repeated runs.
- **Start-up objects frozen.** Once Django, Channels and the app are imported, a web
  process tracks ~150,000 objects that live as long as it does. Every full collection
  walked them all (80 ms, every ~9 s under load: a pause for every socket of the
  process); frozen, full collections skip them (3 ms).
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits


def shorter_gil_turns() -> None:
    """Hand the GIL over after 1 ms instead of 5 (forked children inherit it)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_start_up_objects() -> None:
    """Keep what exists now out of every later collection (call once imported)."""
    gc.collect()
    gc.freeze()
