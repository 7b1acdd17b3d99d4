"""Pausing Python's cyclic garbage collector where a pause would cost more than it saves."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Reference counting still frees everything as usual; only the cycle hunt waits.

    A scan builds a few small objects per disk that all stay alive until the pass ends and
    form no cycles: the collector would walk every one of them again at each full
    collection, a cost that grows faster than the node (a tenth of a 10,000-disk pass).
    And between the executor's last look and its unlink, a full collection in a large
    process (tens of milliseconds) is long enough for a spawn to make its folder and look
    for the base in between."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
