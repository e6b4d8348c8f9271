"""The synthetic benchmark: every box heuristic stays at or under 50% top-1 on a default-size dataset."""
from __future__ import annotations

from svip_core.evaluate.baselines import heuristic_top1_on_clips
from svip_core.io.synth import write_dataset
from svip_core.stages import validate_config


def test_box_heuristics_stay_at_or_under_half_on_the_default_benchmark(tmp_path):
    s = validate_config({})["synthetic"]              # the schema's default sizes
    paths = write_dataset(tmp_path, s["clips"], s["frames"], s["persons"], s["height"], s["width"],
                          s["categories"], s["seed"])
    top1 = heuristic_top1_on_clips(paths)
    print("heuristic top-1 on the default benchmark:", {k: round(v, 3) for k, v in top1.items()})
    assert set(top1) == {"random", "largest_box", "most_central", "longest_visible", "most_motion", "least_motion"}
    assert all(v <= 0.5 for v in top1.values()), top1
