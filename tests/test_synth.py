"""The synthetic benchmarks defeat the single-frame and single-track box heuristics; the relational and visual
ones also defeat the group heuristics and every single-track cue (a per-track network trained on its train split).
The clips are scored as generated without their pixels, validated by the contract in memory: drawing, writing and
reading back frames would prove nothing more here (``svip synth`` and prepare do it in the workflow tests)."""
from __future__ import annotations

import numpy as np
import pytest

from svip_core.config import validate_config
from svip_core.dataset.clip import clip_from_arrays
from svip_core.evaluate.baselines import (
    clip_geometry,
    heuristic_scores,
    heuristic_top1,
    single_track_probe,
    top1,
)
from svip_core.synthetic.generate import generate_clips, make_clip

HEURISTICS = {"random", "largest_box", "most_central", "longest_visible", "most_motion", "least_motion",
              "second_least_motion", "closest_to_all_at_end"}


def benchmark(s: dict, clips: dict[str, int]) -> dict[str, list]:
    """The validated clips of a ``synthetic`` config section, per split, without their pixels."""
    splits: dict[str, list] = {split: [] for split in clips}
    for split, arrays in generate_clips(clips, s["frames"], s["persons"], s["height"], s["width"], s["categories"],
                                        s["seed"], s["scene"], pixels=False):
        splits[split].append(clip_from_arrays(f"{split}/{arrays['video_id']}", arrays))
    return splits


@pytest.mark.slow
def test_box_heuristics_stay_at_or_under_half_on_the_default_benchmark():
    clips = benchmark(validate_config({})["synthetic"], {"test": 300})     # the schema's default clip format
    found = heuristic_top1(clips["test"])
    print("heuristic top-1 on the default benchmark:", {k: round(v, 3) for k, v in found.items()})
    assert set(found) == HEURISTICS
    # The VIP amid its ring is the closest to everyone, and often the second stillest: the social scenes do
    # not defeat those two (0.64 and 0.51 here), which is what the relational scenes are for.
    assert all(v <= 0.5 for k, v in found.items() if k not in ("closest_to_all_at_end", "second_least_motion")), found


@pytest.mark.slow
@pytest.mark.parametrize("scene, persons", [("relational", 8), ("visual", 6)])
def test_on_the_relational_and_visual_benchmarks_no_box_heuristic_or_single_track_cue_finds_the_vip(scene, persons):
    s = validate_config({"synthetic": {"scene": scene, "persons": persons}})["synthetic"]
    clips = benchmark(s, {"train": 200, "test": 200})
    train, test = clip_geometry(clips["train"]), clip_geometry(clips["test"])
    found = {name: top1(scores, test[2], test[1]) for name, scores in heuristic_scores(*test[:2]).items()}
    found["single_track_probe"] = top1(single_track_probe(train, test[:2]), test[2], test[1])
    print(f"top-1 on the {scene} benchmark:", {k: round(v, 3) for k, v in found.items()})
    assert set(found) == HEURISTICS | {"single_track_probe"}
    assert all(v <= 0.35 for k, v in found.items() if k != "single_track_probe"), found
    # 200 training clips leave the probe noisier than at full size (0.30 on 600/200 clips, README).
    assert found["single_track_probe"] <= 0.4, found


@pytest.mark.parametrize("scene", ["social", "relational", "visual"])
def test_a_clip_without_pixels_is_the_same_clip_with_black_frames(scene):
    for i in range(3):
        painted, blank = (make_clip(np.random.default_rng([0, 0, i]), "v", "meeting", 0, 8, 6, 48, 80, scene, pixels)
                          for pixels in (True, False))
        assert painted["frames"].any() and not blank["frames"].any()
        assert all(np.array_equal(painted[k], blank[k]) for k in painted if k != "frames")


def test_the_facing_oracle_reads_the_facing_each_clip_was_drawn_with(monkeypatch):
    """benchmarks/facing_oracle.py repeats the generator's draws to know which way each slot's person faces; the
    facing the scene actually drew (captured as generate_clips runs) must be what it returns, slot by slot."""
    import importlib.util
    from pathlib import Path

    import svip_core.synthetic.relational as relational

    path = Path(__file__).parents[1] / "benchmarks" / "facing_oracle.py"
    spec = importlib.util.spec_from_file_location("facing_oracle", path)
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    drawn = []
    scene = relational.scene
    monkeypatch.setattr(relational, "scene", lambda *a, **k: drawn.append(scene(*a, **k)) or drawn[-1])
    s = {**validate_config({})["synthetic"], "scene": "relational", "persons": 8}
    clips = {"test": 4, "train": 6}
    for (split, arrays), (index, split_again) in zip(
            generate_clips(clips, s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"],
                           s["scene"], pixels=False),
            [(i, k) for k in sorted(clips) for i in range(clips[k])]):
        facing, person = drawn[-1][2], arrays["original_ids"]
        expected = np.zeros((s["frames"], s["persons"]), np.float32)
        expected[:, person >= 0] = facing[:, person[person >= 0]]
        got = oracle.true_facing(s, split, index)
        assert split == split_again and np.array_equal(got, expected) and set(np.unique(got)) <= {-1.0, 0.0, 1.0}


def test_unlabelled_clips_come_without_a_label_and_change_no_labelled_clip(tmp_path):
    from svip_core.dataset.clip import inspect_clip
    from svip_core.dataset.containers import UNLABELLED, list_clips
    from svip_core.synthetic.generate import write_dataset

    def drawn(clips):
        return {(split, str(a["video_id"])): a for split, a in generate_clips(clips, 6, 4, 48, 80, ["meeting"], 3,
                                                                             pixels=False)}

    labelled = drawn({"train": 3, "val": 2})
    both = drawn({"train": 3, "val": 2, "unlabelled": 2})
    assert all(np.array_equal(both[k][f], labelled[k][f]) for k in labelled for f in labelled[k])
    unlabelled = [a for (split, _), a in both.items() if split == "unlabelled"]
    assert len(unlabelled) == 2 and not any("target_index" in a for a in unlabelled)
    assert not any(np.array_equal(u["bboxes"], a["bboxes"]) for u in unlabelled for a in labelled.values())
    for path in write_dataset(tmp_path, {"unlabelled": 1}, 6, 4, 48, 80, ["meeting"], 3):
        assert inspect_clip(path, 10**9, labelled=False).target_index is None
    assert [split for split, _ in list_clips(tmp_path)] == [UNLABELLED]    # the contract's split, as prepare reads it
