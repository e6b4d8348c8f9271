"""Ctrl-C during a run (issue 30): each stopped job says in one line what a re-run does, nothing prints a traceback,
and the re-run resumes where the stop left off."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from conftest import BIN, clone_workflow, snakemake, svip, venv_env, write_config

EPOCHS = 3
# A line the train script logged (svip_core.logs.LOG_FORMAT), not one of torchrun's or Snakemake's.
LOGGED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _wait_for_epoch(state, job: subprocess.Popen, output, timeout: float = 300) -> None:
    """Until the run's checkpoint holds an epoch (written whole: state.json is replaced atomically)."""
    deadline = time.monotonic() + timeout
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        assert job.poll() is None, f"the run ended before train finished an epoch:\n{output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no epoch in {timeout} s:\n{output.read_text()[-3000:]}"
        time.sleep(0.02)


def _left_in(folder) -> list:
    """Processes still running in ``folder`` (a rank that outlived its job would be one)."""
    import psutil

    left = []
    for p in psutil.process_iter(["cwd", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["cwd"] == str(folder):
                left.append(p)
    return left


@pytest.mark.slow
def test_ctrl_c_during_train_prints_one_line_and_the_rerun_resumes(finished_workflow, tmp_path):
    """SIGINT to the workflow's process group (Ctrl-C) while 2 ranks train: Snakemake's own lines and the train
    job's one line (the epoch its checkpoint holds), no traceback, no error report, no process left; then the same
    command resumes after that epoch and finishes."""
    wd = clone_workflow(finished_workflow, tmp_path / "wd")
    config = yaml.safe_load((wd / "config.yaml").read_text())
    # Only train keys change: prepare and extract are the shared run's. Batches of one clip: epochs long enough
    # to stop one midway.
    config["train"].update(nproc=2, epochs=EPOCHS, batch_size=1, patience=100)
    write_config(wd / "config.yaml", config)
    folder = wd / svip("hash", "train", "--path", cwd=wd).stdout.strip()
    target = str(folder.relative_to(wd) / "model.safetensors")
    state = folder / "checkpoints" / "state.json"

    output = tmp_path / "run.out"
    with open(output, "w") as sink:
        job = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", target], cwd=wd, env=venv_env(), text=True,
                               stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_epoch(state, job, output)
            before = len(output.read_text().splitlines())
            os.killpg(job.pid, signal.SIGINT)                 # what Ctrl-C sends: the whole foreground group
            rc = job.wait(timeout=120)
        finally:
            if job.poll() is None:
                for p in _left_in(wd):
                    p.kill()
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    text = output.read_text()
    after = text.splitlines()[before:]
    checkpoint = json.loads(state.read_text())
    epoch, batches = checkpoint["epoch"], checkpoint.get("batches", 0)
    # The ranks stop at the end of a step, where they write a checkpoint (or after the epoch, if it was the last).
    where = f"at batch {batches} of epoch {epoch + 1}" if batches else f"after epoch {epoch}"
    line = f"train full/seed0 stopped {where}; run again to resume"
    assert rc != 0 and 1 <= epoch < EPOCHS, text[-3000:]
    assert "Traceback" not in text and "Error in rule" not in text, "\n".join(after)
    assert line in after, "\n".join(after)
    assert len(after) <= 5, "\n".join(after)                 # one stopped job: at most 5 lines
    stopped_log = (folder / "logs" / "train.log").read_text()
    assert "Traceback" not in stopped_log
    assert not (folder / "model.safetensors").exists()
    deadline = time.monotonic() + 10
    while (left := _left_in(wd)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [p.info["cmdline"] for p in left]

    again = snakemake(wd, target)
    assert again.returncode == 0, again.stderr[-3000:]
    # Snakemake deletes a job's log before it runs: the resumed run's log starts with what the stopped one logged.
    lines = (folder / "logs" / "train.log").read_text().splitlines()
    resumed_at = next(i for i, entry in enumerate(lines) if f"resuming {where} " in entry)
    logged = [entry for entry in stopped_log.splitlines() if LOGGED.match(entry)]
    assert any(entry.endswith(f": {line}") for entry in logged), logged          # the stop, as it was logged
    kept = set(logged)
    assert [entry for entry in lines[:resumed_at] if entry in kept] == logged, "\n".join(lines[:resumed_at])
    assert len((folder / "metrics.csv").read_text().splitlines()) == 1 + EPOCHS


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_script_of_its_own_gives_one_line_and_no_traceback(tmp_path, stop):
    """Stopping works the same under SIGTERM (kill, SLURM) as under SIGINT, and needs no Snakemake: a script run
    as `svip with-gpus` runs train's (interrupt.run_stoppable) prints its line once, exits with 128 + the
    signal and leaves no traceback."""
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time\n"
        "from svip_core.interrupt import holding_stops, run_stoppable\n"
        "def main():\n"
        "    with holding_stops():\n"
        "        print('holding', flush=True)\n"
        "        time.sleep(1.5)\n"
        "        print('held', flush=True)\n"
        "    time.sleep(60)\n"
        "run_stoppable(main, lambda signal: f'job stopped by {signal.name}; run again to resume')\n")
    job = subprocess.Popen([str(BIN / "python"), "-m", "svip_core.cli", "with-gpus", "0", "--", str(BIN / "python"),
                            str(script)], cwd=tmp_path, env=venv_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert job.stdout.readline() == "holding\n"
    os.killpg(job.pid, stop)                    # inside the held block: it ends first
    try:
        out, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert out.splitlines() == ["held", f"job stopped by {stop.name}; run again to resume"], out + err
    assert "Traceback" not in err, err
    # with-gpus dies by SIGINT as a shell expects of a command Ctrl-C ended; SIGTERM gives 128 + 15.
    assert job.returncode == (-signal.SIGINT if stop == signal.SIGINT else 128 + signal.SIGTERM), err
