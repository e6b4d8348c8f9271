"""`svip predict` on real footage (TUD-Campus, MOTChallenge 2015) with the shared workflow's model, and
`svip import` -> `svip validate`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, svip, write_config
from mot15 import MOT15

from svip_core.config import load_config
from svip_core.stages import stage_dir
from svip_core.video.tracks import read_mot

VIDEO = MOT15 / "TUD-Campus" / "TUD-Campus.mp4"
FRAMES = 71


@pytest.fixture(scope="module")
def checkpoint(finished_workflow):
    """The full model the shared workflow trained (real extract and torchrun) on synthetic clips."""
    return finished_workflow / stage_dir(load_config(finished_workflow / "config.yaml"), "train")


def predict(workflow: Path, *args):
    """`svip predict` in the workflow's folder, as a user runs it."""
    return svip("predict", VIDEO, *args, cwd=workflow)


@pytest.mark.slow
def test_predict_detects_tracks_and_ranks_the_people_of_a_real_video(finished_workflow, checkpoint, tmp_path):
    import cv2

    out = tmp_path / "pred"
    result = predict(finished_workflow, "--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith(f"model: {checkpoint} (run full/seed0, test top-1 ")
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) >= 3 and list(ranking["rank"]) == list(range(1, len(ranking) + 1))
    scored = ranking.score.dropna()                       # empty: a short track no scoring window sampled
    assert (scored > 0).all() and scored.is_monotonic_decreasing and len(scored) >= 3 and scored.iloc[0] > 1
    assert ranking.score.isna().sum() == 0 or ranking.score.isna().idxmax() == len(scored)   # unscored ones last
    summary = json.loads((out / "ranking.json").read_text())
    assert summary["vip_track_id"] == ranking.track_id.iloc[0] and summary["frames"] == FRAMES
    assert summary["tracks_source"].startswith("detected (ssdlite, every 3 frames)")
    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    count = 0
    while video.read()[0]:
        count += 1
    assert count == FRAMES                                # playable, and as long as the input
    assert (out / "tracks.txt").stat().st_size > 0


# Two walkers crossing and a person standing from frame 11, all gone after frame 45; then someone seen alone for
# three frames (64-66), where any softmax is 1.
GIVEN_TRACKS = "".join(
    f"{frame},7,{100 + frame * 5:.1f},200,60,150,1,-1,-1,-1\n{frame},9,{500 - frame * 5:.1f},180,65,160,1,-1,-1,-1\n"
    + (f"{frame},12,350,250,55,140,1,-1,-1,-1\n" if frame > 10 else "") for frame in range(1, 46)) + "".join(
    f"{frame},30,300,220,50,130,1,-1,-1,-1\n" for frame in (64, 65, 66))


@pytest.fixture(scope="module")
def given_tracks_run(finished_workflow, checkpoint, tmp_path_factory):
    """`svip predict` on two videos with a folder of their tracks, with no --checkpoint in a folder holding the
    shared workflow's model, under a config whose model cannot be named here (its data is elsewhere): one run for
    the tests of given tracks, of several videos and of the model's choice. TUD-Campus's outputs are in
    ``pred/TUD-Campus``."""
    folder = tmp_path_factory.mktemp("given_tracks")
    shutil.copytree(checkpoint, folder / "results" / "train" / "h0")
    features = stage_dir(load_config(finished_workflow / "config.yaml"), "extract") / "backbone"
    shutil.copytree(finished_workflow / features, folder / features)            # where the model's features name it
    write_config(folder / "config.yaml", {**TINY, "data": {**TINY["data"], "source": "/elsewhere/data"}})
    (folder / "tracks").mkdir()
    (folder / "tracks" / "TUD-Campus.txt").write_text(GIVEN_TRACKS)
    shutil.copy(MOT15 / "TUD-Stadtmitte" / "gt" / "gt.txt", folder / "tracks" / "TUD-Stadtmitte.txt")
    result = svip("predict", VIDEO, MOT15 / "TUD-Stadtmitte" / "TUD-Stadtmitte.mp4", "--tracks", folder / "tracks",
                  "--out", folder / "pred", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def test_predict_uses_given_tracks_and_import_makes_a_valid_clip(given_tracks_run):
    folder, _ = given_tracks_run
    assert sorted(pd.read_csv(folder / "pred" / "TUD-Campus" / "ranking.csv").track_id) == [7, 9, 12, 30]

    data = folder / "data"
    made = svip("import", VIDEO, folder / "tracks" / "TUD-Campus.txt", data, "--vip", 12, "--split", "train", "--max-frames", 40)
    assert made.returncode == 0, made.stderr
    clip_path = data / "train" / "TUD-Campus.npz"
    with np.load(clip_path, allow_pickle=False) as clip:
        assert clip["frames"].shape[0] == 40 and clip["original_ids"][clip["target_index"]] == 12
    checked = svip("validate", data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 accepted, 0 rejected" in checked.stdout


def test_predict_says_why_it_does_not_use_the_configs_model(given_tracks_run):
    """A config whose model cannot be named here falls back to the newest model, and says so: the user sees which
    model ranks and why it is not the configured one, and that a model on the random embedded backbone ranks
    real people meaninglessly. No loading bar cuts into the table."""
    _, result = given_tracks_run
    assert result.stdout.splitlines()[:2] == [
        "model: results/train/h0 (run full/seed0)",
        "note: its features come from the embedded backbone, which is random; its ranking of real people means "
        "little (train on labelled footage with a real DINOv2, features.backbone)"]
    assert "Loading weights" not in result.stdout + result.stderr
    assert "svip predict: the config's model cannot be named (data.source = \"/elsewhere/data\": folder not found." \
        in result.stderr and "using the newest trained model" in result.stderr


def test_a_fragment_alone_in_its_windows_scores_chance_and_is_not_the_vip(given_tracks_run):
    """Scores are lifts over chance, weighted by how long a track is seen: the fragment, alone for three frames,
    scores exactly chance (1), while someone in the crowd the model prefers scores above it."""
    folder, result = given_tracks_run
    ranking = pd.read_csv(folder / "pred" / "TUD-Campus" / "ranking.csv").set_index("track_id")
    assert ranking.score[30] == pytest.approx(1.0)
    assert ranking.score.idxmax() in (7, 9, 12) and ranking.score.max() > 1.0
    assert "x chance" in result.stdout and "nan" not in result.stdout


def test_several_videos_in_one_call_get_a_ranking_each(given_tracks_run):
    folder, result = given_tracks_run
    truth = pd.read_csv(MOT15 / "TUD-Stadtmitte" / "gt" / "gt.txt", header=None)
    stadtmitte = json.loads((folder / "pred" / "TUD-Stadtmitte" / "ranking.json").read_text())
    assert {row["track_id"] for row in stadtmitte["ranking"]} == set(truth[1])
    assert stadtmitte["tracks_source"].endswith("TUD-Stadtmitte.txt")
    assert (folder / "pred" / "TUD-Stadtmitte" / "annotated.mp4").stat().st_size > 0
    assert result.stdout.count("VIP: track") == 2 and result.stdout.count("model: ") == 1     # the model loads once


def test_the_videos_of_a_call_and_their_tracks_and_folders(tmp_path):
    from svip_core.predict.jobs import video_jobs

    for name in ("a/one.mp4", "a/two.avi", "a/notes.txt", "b/one.mp4", "tracks/two.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    jobs = video_jobs([tmp_path / "a"], tmp_path / "tracks", tmp_path / "out")
    assert jobs == [(tmp_path / "a" / "one.mp4", None, tmp_path / "out" / "one"),
                    (tmp_path / "a" / "two.avi", tmp_path / "tracks" / "two.txt", tmp_path / "out" / "two")]
    assert video_jobs([tmp_path / "b" / "one.mp4"], tmp_path / "t.txt") == \
        [(tmp_path / "b" / "one.mp4", tmp_path / "t.txt", Path("results/predict/one"))]
    with pytest.raises(ValueError, match="several videos are named one"):
        video_jobs([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="give a folder of <video name>.txt"):
        video_jobs([tmp_path / "a"], tmp_path / "tracks" / "two.txt")
    with pytest.raises(ValueError, match="no video in that folder"):
        video_jobs([tmp_path / "tracks"])


def test_labels_of_people_standing_close_never_cover_each_other():
    """TUD-Stadtmitte's frame 90 has people side by side, whose labels shared a row: every frame's labels, at
    the video's real sizes, are now apart."""
    from svip_core.predict.drawing import frame_labels

    tracks = read_mot(MOT15 / "TUD-Stadtmitte" / "gt" / "gt.txt", 179)
    scores = np.linspace(0.5, 2.0, len(tracks.ids))
    for t in range(179):
        _, texts, rects = frame_labels(tracks, scores, int(np.argmax(scores)), t, 480)
        for a in range(len(rects)):
            for b in range(a + 1, len(rects)):
                ra, rb = rects[a], rects[b]
                assert not (ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]), (t, texts[a], texts[b])


def test_a_track_no_window_sampled_is_listed_last_as_not_scored():
    from svip_core.predict.pipeline import ranking_table

    table = ranking_table(np.array([4, 5, 6]), np.array([1.4, np.nan, 0.8]), np.array([40, 2, 30]))
    assert list(table.track_id) == [4, 6, 5] and list(table["rank"]) == [1, 2, 3]
    assert table.note.iloc[2] == "not scored: seen in 2 frame(s), none of them sampled by a scoring window"
    assert (table.note.iloc[:2] == "").all()


class CountingCapture:
    """OpenCV's VideoCapture, counting the frames it decodes over all its instances."""

    decoded, opencv = 0, None        # opencv: the class it stands in for

    def __init__(self, *args):
        self.capture = CountingCapture.opencv(*args)

    def read(self, *args):
        ok, frame = self.capture.read(*args)
        CountingCapture.decoded += ok
        return ok, frame

    def grab(self):
        ok = self.capture.grab()
        CountingCapture.decoded += ok
        return ok

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_each_frame_is_decoded_once_and_each_sampled_frame_goes_through_the_backbone_once(checkpoint, tmp_path,
                                                                                          monkeypatch):
    """Windows overlap by half, so most frames are in two of them: the video is still decoded once for the
    ranking (drawing it reads it again), the backbone sees each sampled frame once, and the features it gives
    are those of every visible track in that frame, at the final track's box."""
    import cv2

    from svip_core.features.extract import person_features, resize_frames
    from svip_core.predict.footage import GivenTracks
    from svip_core.predict.model_choice import checked_backbone
    from svip_core.predict.pipeline import predict_video
    from svip_core.predict.scoring import _networks, rank_people
    from svip_core.predict.windows import training_stride, window_indices

    meta = json.loads((checkpoint / "model.json").read_text())
    cfg = meta["features"]["features"]
    source = str(checked_backbone(meta["features"], None))
    backbone, mean, std, _ = _networks(source, str(checkpoint.resolve()), torch.device("cpu"))   # as rank_people
    backbone_frames = []
    hook = backbone.register_forward_pre_hook(
        lambda module, args, kwargs: backbone_frames.append(len(kwargs["pixel_values"])), with_kwargs=True)
    CountingCapture.decoded, CountingCapture.opencv = 0, cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    tracks_file = MOT15 / "TUD-Campus" / "gt" / "gt.txt"
    try:
        footage, _ = rank_people(VIDEO, GivenTracks(tracks_file), checkpoint, device="cpu")
        decoded_to_rank, backbone_frames_to_rank = CountingCapture.decoded, sum(backbone_frames)
        CountingCapture.decoded = 0
        predict_video(VIDEO, tmp_path / "pred", checkpoint, tracks_file, device="cpu")
    finally:
        hook.remove()
    monkeypatch.undo()
    assert decoded_to_rank == FRAMES and CountingCapture.decoded == 2 * FRAMES      # ranking once, drawing once
    windows = window_indices(FRAMES, cfg["num_frames"], training_stride(meta))
    sampled = np.unique(windows[windows >= 0])
    assert backbone_frames_to_rank == len(sampled) < (windows >= 0).sum()
    tracks, K = footage.tracks, len(footage.tracks.ids)
    assert list(footage.keys) == [t * K + k for t in sampled for k in range(K) if tracks.valid[t, k]]

    t = int(sampled[len(sampled) // 2])
    video = cv2.VideoCapture(str(VIDEO))
    video.set(cv2.CAP_PROP_POS_FRAMES, t)
    frame = torch.from_numpy(video.read()[1][..., ::-1].copy()).permute(2, 0, 1)[None]
    size = np.array([frame.shape[-1], frame.shape[-2]] * 2, np.float32)
    boxes = torch.from_numpy((tracks.boxes[t:t + 1] / size).clip(0, 1).astype(np.float32))
    alone = person_features(backbone, resize_frames(frame, cfg["frame_size"]), boxes, cfg["mode"],
                            cfg.get("roi_samples"), cfg.get("crop_size"), mean, std, "fp32")[0]
    for k in np.flatnonzero(tracks.valid[t]):
        torch.testing.assert_close(footage.features[int(np.searchsorted(footage.keys, t * K + k))].float(), alone[k],
                                   atol=2e-3, rtol=0)


def test_predict_with_a_bad_tracks_file_says_which_line(finished_workflow, checkpoint, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,10,50,80,1,-1,-1,-1\n2,1,10,10,-5,80,1,-1,-1,-1\n")
    result = predict(finished_workflow, "--tracks", bad, "--checkpoint", checkpoint, "--out", tmp_path / "x")
    assert result.returncode == 1 and "line 2" in result.stderr and "Traceback" not in result.stderr


def test_the_default_checkpoint_is_the_newest_full_model(tmp_path):
    import os

    from svip_core.predict.model_choice import describe_model, newest_checkpoint

    for i, run in enumerate(["full/seed0", "no_gat/seed0", "full/seed1", "mean_pooling/seed0"]):
        folder = tmp_path / "train" / f"h{i}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"run": run}))
        (folder / "model.safetensors").write_bytes(b"")
        os.utime(folder / "model.safetensors", (1000 + i, 1000 + i))
    assert newest_checkpoint(tmp_path) == tmp_path / "train" / "h2"
    evaluated = tmp_path / "evaluate" / "e2"
    evaluated.mkdir(parents=True)
    (evaluated / "config.json").write_text(json.dumps({"upstream": {"train": "h2"}}))
    (evaluated / "metrics.json").write_text(json.dumps({"split": "test", "clips": 48, "model": {"overall": {
        "top1": {"mean": 0.7083, "ci95": [0.5833, 0.8333]}}}}))
    assert describe_model(tmp_path / "train" / "h2") == \
        f"model: {tmp_path / 'train' / 'h2'} (run full/seed1, test top-1 0.71 [0.58, 0.83] on 48 clips)"
    assert describe_model(tmp_path / "train" / "h1") == f"model: {tmp_path / 'train' / 'h1'} (run no_gat/seed0)"
    with pytest.raises(FileNotFoundError, match="make demo"):
        newest_checkpoint(tmp_path / "nothing")


def test_predict_help_shows_every_default():
    result = svip("predict", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: 3)" in text and "(default: auto)" in text and "(default: None)" not in text
    assert "default: the full model config.yaml trains" in text
