"""Logging for stage jobs: to the job's log file under results/ when given, else to stderr."""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

from tqdm import tqdm

# Off a terminal, a progress line at most this often (a log file keeps lines, not a redrawn bar).
LOG_EVERY_SECONDS = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file=None, level=logging.INFO) -> None:
    # A job's stderr (tqdm) is appended to the same log by its rule, so log to one of the two only.
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_file, mode="a")]
    logging.basicConfig(level=level, handlers=handlers, force=True, format=LOG_FORMAT)


def keep_across_attempts(log_file, attempts_log, resuming: bool) -> None:
    """Log also to ``attempts_log``, a file Snakemake does not manage, and start a resumed run's ``log_file`` with
    what the earlier attempts logged. Snakemake deletes a job's log before the job starts, so without this a
    training resumed by running the workflow again (preempted, stopped, crashed) would lose the lines of every
    attempt before it. A run that starts fresh starts ``attempts_log`` afresh."""
    attempts_log = Path(attempts_log)
    attempts_log.parent.mkdir(parents=True, exist_ok=True)
    if not resuming:
        attempts_log.unlink(missing_ok=True)
    elif log_file and attempts_log.exists():
        earlier = attempts_log.read_text()
        log_file = Path(log_file)
        # A log that was kept (a run by hand, appending to the same file) holds those lines already.
        first = earlier.partition("\n")[0]
        if first and first not in (log_file.read_text(errors="replace") if log_file.exists() else ""):
            with open(log_file, "a") as f:
                f.write(earlier)
    handler = logging.FileHandler(attempts_log, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


class _LogLines(io.TextIOBase):
    """A file for tqdm: each refresh becomes one plain log line, without carriage returns or a bar."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.logger.info(line)
        return len(text)


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm's bar on a terminal; elsewhere (a job writing its log file) a plain line through logging at the
    start, every LOG_EVERY_SECONDS and at the end, such as ``extract a.zarr: 63/140 [00:08<00:10, 7.9batch/s]``."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", LOG_EVERY_SECONDS)
    kwargs["leave"] = True
    return tqdm(iterable, file=_LogLines(logging.getLogger("progress")), ascii=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]", **kwargs)
