"""Logging for stage jobs: to the job's log file under results/ when given, else to stderr."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file=None, level=logging.INFO) -> None:
    # A job's stderr (tqdm) is appended to the same log by its rule, so log to one of the two only.
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_file, mode="a")]
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
