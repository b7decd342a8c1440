"""The garbage collector, tuned for a long-running server process (the hub and the worker).

The collector's full passes scan every object the process holds; while 10,000 subscribers
connect to a hub there were 8-9 of them, 0.6-2.1 s at the longest. Start-up's objects (a hub's
108,000: modules, routes, schemas; a worker's: modules, models' sessions, onnx metadata) never
become garbage: frozen out of the scans. And a full pass comes at most once per 100
middle-generation passes, not 10. Both, in a hub: 1 full pass of 0.35-0.51 s, the same 22 KiB
per idle connection (24.5, not 22.0, at 1,000 connections: their handshakes' garbage waits for
the rarer full pass); bench/fanout.py --gc-stats.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once start-up is done: what it made is kept out of every later scan."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
