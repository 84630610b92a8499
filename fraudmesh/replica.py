"""What every Serve replica does once it has started, before its first request.

:func:`settle` moves the objects made at start-up (the Feast registry and
store, torch modules, the OpenTelemetry SDK, Ray's own) into the permanent
generation with ``gc.freeze()``. They live as long as the process, but without
this every full pass of the cyclic collector walks them all again, and such a
pass, run in the middle of a request, is a visible step in the latency tail.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then exempt everything alive now from later collections."""
    gc.collect()
    gc.freeze()
