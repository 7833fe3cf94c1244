"""Keep freed memory in the process instead of returning it to the OS (glibc only).

Why: a model call on a few hundred atoms allocates per-edge tensors of several MB.
glibc serves blocks that large with mmap and unmaps them on free, so every request
page-faults its working set in again. Raising the mmap and trim thresholds keeps those
pages mapped between requests. Measured on the 2-core CPU (untrained DualHead M,
float64, 1 thread, median of 3 calls, two separate processes each): 192 atoms direct
45-51 -> 32-36 ms, conservative 100 -> 79-89 ms; 1536 atoms direct 433-454 -> 271-316 ms.
The cost is a larger resident size (freed blocks stay mapped).

Set IPI_NC_NO_MALLOC_TUNING=1 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap, not fresh mmaps
_TRIM_THRESHOLD_BYTES = 1 << 30  # keep up to 1 GiB of freed heap mapped (fits a C int)

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; returns True if the tuning was applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("IPI_NC_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) and libc.mallopt(
            _M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES
        )
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    _done = bool(ok)
    return _done
