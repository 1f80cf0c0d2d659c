"""run.log: what a run printed, kept in its run directory.

Hydra's job logging writes only `logging` records to <run dir>/run.log, and the stages report through
print (their results, the store's and the engine's notes, tqdm bars, warnings, the one-line error),
so the file stayed empty. `tee_output` copies stdout and stderr there line by line while they still
reach the terminal; a progress bar redrawn with carriage returns is logged as its last state.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path


class _Tee:
    """A text stream that writes to `stream` and appends each finished line to `log`."""

    def __init__(self, stream, log, prefix: str = ""):
        self._stream, self._log, self._prefix, self._pending = stream, log, prefix, ""

    def write(self, s: str) -> int:
        n = self._stream.write(s)
        self._pending += s
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                line = line.rstrip("\r").rsplit("\r", 1)[-1]  # a bar's final redraw
                self._log.write(f"{self._prefix}{line}\n")
            self._log.flush()
        return len(s) if n is None else n

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        rest = self._pending.rsplit("\r", 1)[-1]
        if rest.strip():
            self._log.write(f"{self._prefix}{rest}\n")
        self._pending = ""
        self._log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's (tqdm asks)
        return getattr(self._stream, name)


@contextlib.contextmanager
def tee_output(path: Path | str):
    """Within the block, stdout and stderr also go to `path` (appended; Hydra's own log records land in
    the same file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        out, err = sys.stdout, sys.stderr
        tees = (_Tee(out, log), _Tee(err, log))
        sys.stdout, sys.stderr = tees
        try:
            yield path
        finally:
            for t in tees:
                with contextlib.suppress(Exception):
                    t.flush()
                t.finish()
            sys.stdout, sys.stderr = out, err
