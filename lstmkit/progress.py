"""Progress for people and for logs: tqdm's bar on a terminal; plain lines where the output is a file.

A bar redraws itself with carriage returns many times a second; in a log (a file, CI, nohup, a job scheduler)
every redraw stays, hundreds a minute. When standard error is not a terminal, `progress_bar` gives a
`PlainProgress` instead: the same calls, one plain line at most every `PLAIN_PROGRESS_SECONDS`, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_PROGRESS_SECONDS = 10.0


class PlainProgress:
    """The part of tqdm's interface lstmkit uses, printing `desc: n/total unit (p%), postfix` lines, rate-limited."""

    def __init__(self, total: int | None, initial: int = 0, disable: bool = False, unit: str = "it",
                 desc: str = "", unit_scale: bool = False) -> None:
        self.total, self.n, self.disable, self.unit, self.desc = total, initial, disable, unit, desc
        self.unit_scale = unit_scale
        self.postfix = ""
        self.last_line = time.monotonic()
        self.started_at = initial

    def _amount(self, value: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(value, divisor=1024)
        return f"{value:,.0f}"

    def line(self) -> str:
        # "train: step 30/60 (50%)"; sizes as tqdm writes them: "imdb.tar.gz: 3.00MB/84.1MB (4%)"
        done = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        done = f"{done}{self.unit}" if self.unit_scale else f"{self.unit} {done}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        return f"{self.desc}: {done}" + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last_line >= PLAIN_PROGRESS_SECONDS:
            self.last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    @staticmethod
    def write(line: str) -> None:
        """A line of its own, on standard output (as tqdm.write puts it)."""
        print(line, flush=True)

    def close(self) -> None:
        """The last line: where it ended (when it moved at all)."""
        if not self.disable and self.n != self.started_at:
            print(self.line(), file=sys.stderr, flush=True)
        self.started_at = self.n


def progress_bar(total: int | None, initial: int = 0, disable: bool = False, unit: str = "it", desc: str = "",
                 unit_scale: bool = False) -> Any:
    """tqdm's bar when standard error is a terminal, else a PlainProgress with the same interface."""
    if not sys.stderr.isatty():
        return PlainProgress(total, initial, disable, unit, desc, unit_scale)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=disable, unit=unit, desc=desc, unit_scale=unit_scale,
                unit_divisor=1024, dynamic_ncols=True)
