"""Training progress: a bar on a terminal, a line a minute in a log."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """A progress bar on a terminal; otherwise a plain line every `every_s` seconds (workflow logs)."""

    def __init__(self, total: int, description: str, enabled: bool, every_s: float = 60.0):
        self.enabled, self.every_s, self.description, self.total = enabled, every_s, description, total
        terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=description, unit="batch", leave=False) if terminal else None
        self.done = self.clips = 0
        self.start = self.last = time.monotonic()

    def update(self, clips: int, loss: float) -> None:
        self.done += 1
        self.clips += clips
        rate = self.clips / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.1f}", refresh=False)
            self.bar.update()
        elif self.enabled and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(f"{self.description}: batch {self.done}/{self.total}, loss {loss:.4f}, {rate:.1f} samples/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
