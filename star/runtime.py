"""Process settings that decide CPU speed as much as the model does, applied once by the `star` command.

glibc's malloc gives every large allocation (above a threshold that starts at
128 KB) its own fresh mapping from the kernel and unmaps it on free, and
returns the top of the heap to the kernel once 128 KB of it is free. A
forward pass allocates and frees activations of tens of MB, so each pass
touches freshly mapped pages again and the kernel zeroes them on first touch
(ST-GCN, whose padded activations are larger, pays most), and latencies
change with whatever ran in the process before (fvcore's tracing raises
glibc's adaptive threshold as a side effect). `keep_freed_memory` serves every allocation
from the heap and never trims the main thread's, which is what the jemalloc or tcmalloc
preload that CPU performance guides recommend achieves: a process keeps its
peak memory, and latencies no longer depend on history. Set
STAR_KEEP_FREED_MEMORY=0 to leave glibc's defaults.

Blocks of STAR's activations are tens of MB of 4 KB pages, and its kernels
read them a token (1.5 KB) at a time, a whole row of tokens (38 KB) apart,
each read on another page. `use_huge_pages` has torch's CPU allocator advise
the kernel to back its blocks of 2 MB and more with transparent huge pages
(torch's THP_MEM_ALLOC_ENABLE, read at its first allocation, so this runs
first), which the kernel does where its THP mode is `always` or `madvise`;
STAR_HUGE_PAGES=0 asks torch not to.

Subnormal floats (below 1.2e-38 in float32) cost x86 CPUs a microcode
assist per operation. Once a model fits its training clips, the loss's
gradient can fall that low and flow back through every layer, and training
runs an order of magnitude slower (README, "Profiling").
`flush_denormals` has the CPU treat them as zero (`torch.set_flush_denormal`);
STAR_FLUSH_DENORMALS=0 keeps them. The worker threads torch starts later
inherit the setting, so it is applied before the first parallel operation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_TRIM_NEVER = -1  # a value of M_TRIM_THRESHOLD (SIZE_MAX to glibc): "-1 disables trimming completely", mallopt(3)
_state = {"allocator": "platform default", "huge_pages": "", "denormals": "kept (not set in this process)"}
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"  # e.g. "always [madvise] never": the mode in brackets
_HUGE_PAGE = 1 << 21  # bytes: torch advises huge pages for blocks of this size and more


def keep_freed_memory() -> dict:
    """Make glibc keep freed memory for reuse (no per-allocation mappings, no trimming); what was done."""
    if os.environ.get("STAR_KEEP_FREED_MEMORY", "1") == "0":
        _state["allocator"] = "glibc defaults (STAR_KEEP_FREED_MEMORY=0)"
        return dict(_state)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return dict(_state)  # not glibc (macOS, Windows, musl): nothing to set
    # the main heap never trimmed: the largest positive threshold (2^31 - 1) still hands back its top whenever
    # that much of it is free, as after STAR-128's training steps on long clips (other threads' heaps still give
    # back whole 64 MB pieces that fall empty; torch allocates a model's tensors on the calling thread)
    if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1:
        _state["allocator"] = "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)"
    return dict(_state)


def use_huge_pages() -> dict:
    """Ask torch's CPU allocator to advise transparent huge pages for its blocks of 2 MB and more (or, with
    STAR_HUGE_PAGES=0, not to); what was done, as /proc/self/smaps shows it on a new 2 MB block."""
    declined = os.environ.get("STAR_HUGE_PAGES", "1") == "0"
    try:
        mode = open(_THP_MODE).read()
    except OSError:
        return dict(_state)  # no transparent huge pages (not Linux): nothing to ask for
    if "[never]" in mode:
        _state["huge_pages"] = "no huge pages (the kernel's THP mode is never)"
        return dict(_state)
    os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if declined else "1"  # this process and the ones it starts
    import torch  # after the request: torch reads it at its first allocation

    if huge_pages_advised(torch.empty(_HUGE_PAGE, dtype=torch.uint8).data_ptr()):
        _state["huge_pages"] = "torch's blocks of 2 MB and more advised to use huge pages"
    else:  # under THP mode always the kernel may still use huge pages where it can
        _state["huge_pages"] = ("huge pages not requested (STAR_HUGE_PAGES=0)" if declined else
                                "huge pages not confirmed (no hg flag on a torch block in /proc/self/smaps)")
    return dict(_state)


def huge_pages_advised(address: int) -> bool:
    """True where the mapping that holds `address` is advised to use huge pages (`hg` among its VmFlags in
    /proc/self/smaps, which torch's madvise sets); False where that cannot be read."""
    holds = False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                first = line.split(maxsplit=1)[0]
                if not first.endswith(":"):  # a mapping's header: start-end in hexadecimal, then its permissions
                    start, end = (int(bound, 16) for bound in first.split("-"))
                    holds = start <= address < end
                elif holds and first == "VmFlags:":
                    return "hg" in line.split()
    except (OSError, ValueError):
        return False
    return False


def allocator() -> str:
    """How host memory is being allocated in this process, for result files."""
    return "; ".join(part for part in (_state["allocator"], _state["huge_pages"]) if part)


def flush_denormals() -> dict:
    """Have the CPU flush subnormal floats to zero, in this thread and the threads it starts; what was done."""
    import torch  # here, so that reading the settings (star.provenance) imports nothing heavy

    if os.environ.get("STAR_FLUSH_DENORMALS", "1") == "0":
        torch.set_flush_denormal(False)
        _state["denormals"] = "kept (STAR_FLUSH_DENORMALS=0)"
    elif torch.set_flush_denormal(True):
        _state["denormals"] = "flushed to zero"
    else:  # torch flushes on x86 CPUs with SSE3 and on AArch64 only
        _state["denormals"] = "kept (torch cannot flush them on this CPU)"
    return dict(_state)


def apply() -> dict:
    """Every setting of this module, as the `star` command applies them before it runs a model."""
    keep_freed_memory()
    use_huge_pages()
    return flush_denormals()


def denormals() -> str:
    """How subnormal floats are handled in this process, for result files."""
    return _state["denormals"]
