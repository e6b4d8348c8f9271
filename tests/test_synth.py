"""The synthetic benchmarks defeat the single-frame and single-track box heuristics; the relational one also
defeats the group heuristics and every single-track cue (a per-track network trained on its train split)."""
from __future__ import annotations

import pytest

from svip_core.config import validate_config
from svip_core.evaluate.baselines import (
    clip_geometry,
    heuristic_scores,
    heuristic_top1_on_clips,
    single_track_probe,
    top1,
)
from svip_core.synthetic.generate import write_dataset

HEURISTICS = {"random", "largest_box", "most_central", "longest_visible", "most_motion", "least_motion",
              "second_least_motion", "closest_to_all_at_end"}


@pytest.mark.slow
def test_box_heuristics_stay_at_or_under_half_on_the_default_benchmark(tmp_path):
    s = validate_config({})["synthetic"]              # the schema's default clip format
    paths = write_dataset(tmp_path, {"test": 300}, s["frames"], s["persons"], s["height"], s["width"],
                          s["categories"], s["seed"])
    found = heuristic_top1_on_clips(paths)
    print("heuristic top-1 on the default benchmark:", {k: round(v, 3) for k, v in found.items()})
    assert set(found) == HEURISTICS
    # The VIP amid its ring is the closest to everyone, and often the second stillest: the social scenes do
    # not defeat those two (0.64 and 0.51 here), which is what the relational scenes are for.
    assert all(v <= 0.5 for k, v in found.items() if k not in ("closest_to_all_at_end", "second_least_motion")), found


@pytest.mark.slow
def test_on_the_relational_benchmark_no_box_heuristic_or_single_track_cue_finds_the_vip(tmp_path):
    s = validate_config({"synthetic": {"scene": "relational", "persons": 8}})["synthetic"]
    paths = write_dataset(tmp_path, {"train": 200, "test": 200}, s["frames"], s["persons"], s["height"],
                          s["width"], s["categories"], s["seed"], s["scene"])
    train = clip_geometry([p for p in paths if p.parent.name == "train"])
    test = clip_geometry([p for p in paths if p.parent.name == "test"])
    found = {name: top1(scores, test[2], test[1]) for name, scores in heuristic_scores(*test[:2]).items()}
    found["single_track_probe"] = top1(single_track_probe(train, test[:2]), test[2], test[1])
    print("top-1 on the relational benchmark:", {k: round(v, 3) for k, v in found.items()})
    assert set(found) == HEURISTICS | {"single_track_probe"}
    assert all(v <= 0.35 for k, v in found.items() if k != "single_track_probe"), found
    # 200 training clips leave the probe noisier than at full size (0.30 on 600/200 clips, README).
    assert found["single_track_probe"] <= 0.4, found
