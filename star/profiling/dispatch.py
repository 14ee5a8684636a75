"""Counting the operators a call dispatches: a device-independent proxy for GPU launch overhead.

Every operator that reaches ATen's dispatcher is at least one kernel launch on
a GPU (views excepted, which launch nothing but still cost host time), so the
count of a forward pass, and whether it grows with the batch, says how much of
a GPU's time would go to launching rather than computing. A
`TorchDispatchMode` sees each operator below autograd, on any device,
including the meta device, so the count needs no GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class DispatchCounter(TorchDispatchMode):
    """Counts every ATen operator dispatched while active: `total`, by name (`counts`), and `views`."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        """Operators that compute (every one but the views): each is at least one kernel launch on a GPU."""
        return self.total - self.views


def count_dispatches(function: Callable[[], object]) -> DispatchCounter:
    """Run `function()` once under a DispatchCounter and return it."""
    with DispatchCounter() as counter:
        function()
    return counter
