"""What reaches the console: one line per stage, the run's own summary (the systems' table and the recommendation)
and every warning. Everything else a run logs (cache hits, encode rates, searches, mining counts, training steps) goes
to train.log only, and to the console too with `verbose=true`.

conf/config.yaml puts `ConsoleFilter` on Hydra's console handler (`hydra.job_logging`), so no module decides where
its lines go: a record is for the console when it is logged with `extra=CONSOLE`."""

from __future__ import annotations

import logging

CONSOLE = {"console": True}


class ConsoleFilter(logging.Filter):
    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.levelno >= logging.WARNING or getattr(record, "console", False)
