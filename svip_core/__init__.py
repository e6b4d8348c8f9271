"""SVIP: rank the people in a video clip by social importance.

Data flows one way: io -> features -> model -> train -> evaluate -> report.
`svip_core.stages` (config and stage hashes) sits under all of them.
"""

__version__ = "0.1.0"
