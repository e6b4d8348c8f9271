"""Stopping on SIGINT (Ctrl-C) or SIGTERM (``kill``, SLURM's ``scancel`` and time limit): a line per stopped job and
no traceback, with everything a re-run resumes from kept.

Ctrl-C reaches every process of the terminal's foreground process group: Snakemake, and each job's shell, ``svip
with-gpus``, ``svip torchrun`` (torchrun itself, in-process) and the job's script. torchrun's ranks run in sessions
of their own and get the signal from torchrun. SLURM signals every process of the job. So each process only looks
after itself, by one convention:

- a job that stops on the signal prints (and logs) its line and exits with 128 + the signal's number (130 for
  SIGINT, 143 for SIGTERM): ``run_stoppable`` (train's ranks: rank 0 says where a re-run resumes);
- a process that runs a job waits for it through the signal, which reached the job too, and ends as a stopped job
  once it has ended (``run_through_stops``, ``exit_like``); so does the job's shell (the trap of
  rules/common.smk's shell prefix);
- Snakemake reports a job that a stop ended in one line, not as a failure (``StoppedJobs``): nothing more for a
  job that said its line (its log holds it), ``<rule> stopped; run again to redo it (...)`` for one that did not (a
  script without a handler of its own, such as extract's).

A job that fails in any other way is reported as before, with its traceback and log.
"""
from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Callable

from svip_core.logs import LOG_FORMAT

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = logging.getLogger(__name__)
# A stopped job's own line goes to its log under this name too: Snakemake's side finds it there (``said_line``).
said = logging.getLogger(f"{__name__}.stopped")


class Stopped(KeyboardInterrupt):
    """Raised in the main thread of a process under ``run_stoppable`` when SIGINT or SIGTERM arrives."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Stop:
    pid: int | None = None          # the process that runs under run_stoppable (not a fork of it)
    signum: int | None = None       # the first stop signal received
    holding = 0                     # depth of holding_stops blocks
    raised = False                  # Stopped has been raised (once per process)


_stop = _Stop()


def _on_signal(signum, frame) -> None:
    if os.getpid() != _stop.pid:
        # A forked child (a DataLoader worker) inherited the handler: behave as Python would without it.
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _stop.signum is None:
        _stop.signum = signum
    if not (_stop.holding or _stop.raised):   # a second signal (SLURM's and torchrun's) changes nothing
        _stop.raised = True
        raise Stopped(signum)


@contextmanager
def holding_stops():
    """A stop that arrives inside the block takes effect when the block ends, so what it writes (a checkpoint, the
    final model) is written whole or not at all. Keep such blocks short: torchrun kills ranks 30 s after its
    signal."""
    _stop.holding += 1
    try:
        yield
    finally:
        _stop.holding -= 1
    if not _stop.holding and _stop.signum is not None and not _stop.raised and os.getpid() == _stop.pid:
        _stop.raised = True
        raise Stopped(_stop.signum)


def pending_stop() -> int:
    """The stop signal this process received and has not acted on yet (0: none). Inside ``holding_stops`` a stop
    waits for the code to poll this where all its processes can stop together (train's ranks, at a step)."""
    return 0 if _stop.raised or _stop.signum is None else int(_stop.signum)


def stop_now(signum: int):
    """Stop as if ``signum`` had arrived here: a rank that learns of another rank's stop stops with it."""
    if _stop.signum is None:
        _stop.signum = signum
    _stop.raised = True
    raise Stopped(signum)


def run_stoppable(main: Callable[[], object], describe: Callable[[signal.Signals], str | None]) -> object:
    """``main()``, stopped quietly by SIGINT or SIGTERM: the stop (or any error after it, as when a rank that
    stopped first breaks a collective) ends the process with status 128 + the signal, after logging and printing
    ``describe(signal)``'s line (none when it returns None), without a traceback. Errors before a stop propagate."""
    _stop.pid = os.getpid()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        return main()
    except BaseException as e:
        if _stop.signum is None:
            raise
        # Only its name is kept: the traceback's frames go now (a progress bar in them closes before the line).
        after = "" if isinstance(e, Stopped) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for signum in STOP_SIGNALS:     # stopping now: a second Ctrl-C changes nothing
        signal.signal(signum, signal.SIG_IGN)
    gc.collect()
    received = signal.Signals(_stop.signum)
    if after:
        log.info("after %s: %s", received.name, after)
    try:
        line = describe(received)
    except Exception as e:          # the stop is reported all the same
        log.info("stopped; its line could not be made: %s: %s", type(e).__name__, e)
        line = None
    if not line:
        log.info("stopped by %s", received.name)
    else:
        if not logging.getLogger().handlers:        # stopped before logging was set up: to stderr, the job's log
            logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        said.info(line)
        print(line, flush=True)
    raise SystemExit(128 + received)


def run_through_stops(command: list[str], **popen) -> int:
    """Run ``command`` and return its exit status (negative: the signal that killed it), waiting for it through
    SIGINT and SIGTERM. The child is in this process's process group, so Ctrl-C, ``kill -INT -PGID`` and SLURM
    reach it too and it stops on its own; signalling it again would only cut its stop short (torchrun's shutdown,
    for one). Signal the whole group, not this process alone. A child that fails after such a signal was stopped
    by it, whatever its status (extract.py's KeyboardInterrupt ends it with status 1, not by SIGINT as Python's
    usually do): the status is then minus that signal."""
    received: list[int] = []

    def note(signum, frame) -> None:
        received.append(signum)
        log.info("%s received; waiting for the job to stop", signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
    try:
        with subprocess.Popen(command, **popen) as process:   # the handlers are in place before it starts
            returncode = process.wait()                         # PEP 475: the wait resumes after each signal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return -received[0] if received and returncode else returncode


def quiet_sigint() -> None:
    """SIGINT ends this process as SIGTERM does, silently, instead of with a KeyboardInterrupt traceback (unless it
    is ignored, as in a shell's background job)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def exit_like(returncode: int) -> int:
    """A waited-for child's status (``run_through_stops``) as this process's exit status. A child SIGINT stopped
    kills this process by SIGINT, as a shell expects of a command that Ctrl-C ended; one SIGTERM stopped gives 143
    (dying by SIGTERM would have the shell print "Terminated")."""
    if returncode == -signal.SIGINT:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return 128 - returncode if returncode < 0 else returncode


# ---- Snakemake's side ------------------------------------------------------------------------------------------

# How Python's CalledProcessError ends (Snakemake runs shell jobs with subprocess): the status, or the signal.
_STATUS = re.compile(r"(?:returned non-zero exit status (\d+)|died with <Signals\.\w+: (\d+)>)\.\s*$")
# A line run_stoppable logged, in the format of logs.setup_logging.
_SAID = re.compile(rf" {re.escape(said.name)}: (.*)$", re.MULTILINE)
# Snakemake's words after a failed job, which after stopped jobs alone only repeat what their lines said.
_AFTER_FAILURE = ("Exiting because a job execution failed. Look above for error messages",
                  "At least one job did not complete successfully.", "Shutting down, this might take some time.")
_REMOVING = "Removing output files of failed job "
_GRACEFUL = "Will exit after finishing currently running jobs (scheduler)."     # Snakemake on SIGTERM, once a job


def stopped_status(message: str) -> bool:
    """Whether Snakemake's report of a job's command says a stop signal ended it: status 128 + SIGINT or SIGTERM
    (the job stopped on it, or its shell did once the job had), or killed by one."""
    found = _STATUS.search(message)
    if not found:
        return False
    return (int(found.group(1)) - 128 if found.group(1) is not None else int(found.group(2))) in STOP_SIGNALS


def said_line(logs) -> str | None:
    """The line a stopped job logged itself (run_stoppable), from the end of its log files."""
    for name in logs:
        try:
            with open(name, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                found = _SAID.findall(f.read().decode("utf-8", "replace"))
        except OSError:
            continue
        if found:
            return found[-1]
    return None


class StoppedJobs(logging.Filter):
    """On Snakemake's logger: a job that a stop signal (SIGINT, SIGTERM) ended is reported in one line instead of
    an error with its command and its whole log: the line the job printed itself (train's ``... stopped after
    epoch N; run again to resume``, found in its log), else ``<rule> stopped; run again to redo it (<outputs>)``.
    Once only stopped jobs failed, Snakemake's closing error messages (and its notes on removing their partial
    outputs) are left out too; the run still exits with an error.

    Snakemake logs a failed shell job as two records from the thread that ran it: the exception (its
    CalledProcessError, which ends with the exit status or the signal), then the job's error (rule, files, log).
    Any failure that is not a stop is left exactly as Snakemake reports it."""

    def __init__(self):
        super().__init__("svip.stopped_jobs")
        self.pending: set[int] = set()          # threads whose next job error is a stopped job's
        self.outputs: set[str] = set()          # the outputs of stopped jobs
        self.stopped = 0
        self.failed = 0
        self.graceful = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self._keep(record)
        except Exception:           # never in Snakemake's way: the record as it is
            return True

    def _keep(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event == "error" and getattr(record, "exception", None) == "RuleException":
            if not stopped_status(record.getMessage()):
                self.failed += 1
                return True
            self.pending.add(record.thread)
            return False
        if event == "job_error":
            if record.thread not in self.pending:
                self.failed += 1
                return True
            self.pending.discard(record.thread)
            self.stopped += 1
            outputs = list(getattr(record, "output", None) or ())
            self.outputs.update(outputs)
            if said_line(getattr(record, "log", None) or ()) is not None:
                return False                    # the job printed its line
            record.msg = f"{record.rule_name} stopped; run again to redo it ({', '.join(outputs)})"
            record.args, record.event, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
            return True
        message = record.getMessage()
        if message.strip() == _GRACEFUL:
            if self.graceful:
                return False
            self.graceful = True
        if self.stopped and not self.failed:
            if message.startswith(_REMOVING) and set(_files(message)) <= self.outputs:
                return False
            if message.rstrip().endswith(_AFTER_FAILURE):
                return False
        return True


def _files(message: str) -> list[str]:
    """The files of Snakemake's 'Removing output files of failed job ...:' note (second line, comma-separated)."""
    listed = message.split("\n", 1)[1] if "\n" in message else ""
    return [f.strip().split(" (")[0] for f in listed.split(", ") if f.strip()]


def report_stopped_jobs() -> None:
    """Install ``StoppedJobs`` on Snakemake's logger (from the Snakefile; once per process)."""
    snakemake_log = logging.getLogger("snakemake.logging")
    if not any(isinstance(f, StoppedJobs) for f in snakemake_log.filters):
        snakemake_log.addFilter(StoppedJobs())
