"""Logging for stage jobs: everything to the job's log file under results/, warnings also to stderr."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file=None, level=logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
