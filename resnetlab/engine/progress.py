"""A progress bar with ETA on a terminal (tqdm), plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """``update_to`` at log points; ``write`` for a line that must not break the bar. Only rank 0 shows."""

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None, main: bool = True) -> None:
        self.main = main
        self.interactive = main and (sys.stderr.isatty() if enabled is None else enabled)
        self.total, self.start, self.t0 = total, initial, time.perf_counter()
        self.bar = (
            tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr)
            if self.interactive
            else None
        )

    def update_to(self, iteration: int, **stats: float) -> None:
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
        elif self.main:
            done = iteration - self.start
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - iteration) / rate if rate > 0 else float("inf")
            fields = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
            print(
                f"[{iteration}/{self.total}] {fields} | {rate:.2f} it/s, eta {eta / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    def write(self, line: str) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
