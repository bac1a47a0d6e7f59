"""Giving the memory of start-up back to the system.

Building the first table at 50,000 remote endpoints (every record parsed, the switch's table
dumped and compared rule for rule, or encoded and sent) allocates far more than the agent keeps
afterwards. Python frees those objects, but glibc keeps the freed heap pages mapped for reuse.
malloc_trim(0) returns free pages to the kernel (from the whole heap, not only its top, since
glibc 2.8). Measured by bench/scale.py at 50,000 (the agent before the restart: 123-124 MB):
the restarted agent 159 MB without this, 146 MB with it. Without glibc (musl), nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def release_free_memory() -> bool:
    """Return freed heap pages to the kernel; True if glibc's malloc_trim was there to ask."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    except OSError:
        return False
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
