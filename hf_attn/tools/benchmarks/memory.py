"""Peak resident memory of a CPU run, where there are no allocator statistics like CUDA's."""

import os
import threading


def return_freed_memory() -> None:
    """Make glibc give every large freed block back to the system at once, so `PeakRSS` sees each run.

    glibc serves blocks from 128 KiB up with mmap, but raises that threshold after such a block is
    freed, and later blocks then come from the heap and stay resident. Fixing the threshold
    (mallopt M_MMAP_THRESHOLD) turns that off. Does nothing where libc is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, sampled from a thread every `interval` seconds.

    CPU tensors have no allocator statistics like `torch.cuda.max_memory_allocated`; large tensors
    are mmap'd and returned to the system when freed, so the resident set follows them closely.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_bytes = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.rss() - self.start)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss() - self.start)
