"""SVIP: rank the people in a video clip by social importance.

Data flows one way: the dataset contract (``dataset``, with the synthetic benchmarks in ``synthetic`` and raw
video to tracks in ``video`` beside it) -> ``features`` -> ``model`` -> ``train`` -> ``evaluate`` -> ``report``;
``predict`` (raw videos) uses them all. Below everything: ``hashing`` and ``atomic`` (digests, atomic writes),
``logs``, ``interrupt`` (a job stopped by Ctrl-C or SIGTERM: one line, no traceback), ``config``. ``stages``
names each stage's identity; ``devices`` (GPU slots) and ``launch`` (torchrun on one machine or across SLURM
nodes) start jobs; ``cli`` is ``svip``. tests/test_layout.py keeps the order.
"""

__version__ = "0.1.0"
