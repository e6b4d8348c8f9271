"""SVIP: rank the people in a video clip by social importance.

Data flows one way: io -> features -> model -> train -> evaluate -> report, and ``predict`` (raw videos)
uses them all. Under everything: ``stages`` (config and stage hashes); beside it, for launching jobs:
``devices`` (GPU slots) and ``launch`` (torchrun on one machine or across SLURM nodes). ``cli`` is ``svip``.
"""

__version__ = "0.1.0"
