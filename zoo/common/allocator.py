"""glibc's allocator, set for the kind of process rnnzoo runs (``mallopt``; elsewhere nothing is done).

The two settings are opposite because the processes are: a training step frees and allocates the same
large buffers (logits, their gradients) every step, so handing them back to the system only makes the
next step fault them in again; a server answers calls of every size for days, so it must hand large
blocks back, or it stays at the size of its largest calls. docs/benchmarks.md and docs/security.md
have what each setting measured.
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _mallopt(*settings: tuple[int, int]) -> None:
    """``mallopt(parameter, value)`` for each ``(parameter, value)``; nothing without glibc."""
    if sys.platform != "linux":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    for parameter, value in settings:
        mallopt(parameter, value)


def keep_freed_memory() -> None:
    """Training: buffers of up to 32 MB (glibc's ceiling for the mmap threshold) stay on the heap when
    freed, and up to 1 GB of free heap is kept, for the next step. Process-wide, for good."""
    _mallopt((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30))


def return_freed_memory() -> None:
    """Serving: glibc raises its mmap threshold as large blocks are freed and then serves them from heaps
    it seldom trims; a fixed threshold maps every block over 64 KB and unmaps it when freed."""
    _mallopt((M_MMAP_THRESHOLD, 64 * 1024))
