"""``svip predict``: for each video its tracks, scores, ranking files and the annotated video."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from svip_core.predict.drawing import annotate
from svip_core.predict.footage import DetectedTracks, GivenTracks
from svip_core.predict.model_choice import newest_checkpoint
from svip_core.predict.scoring import rank_people
from svip_core.predict.windows import training_stride, window_indices
from svip_core.video.tracks import write_mot

log = logging.getLogger(__name__)


def ranking_table(track_ids: np.ndarray, scores: np.ndarray, frames_visible: np.ndarray) -> pd.DataFrame:
    """The ranking: scored tracks by score (``score_tracks``), then those no scoring window sampled, with their
    score left empty and the reason in ``note``."""
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    visible = frames_visible[order]
    note = [f"not scored: seen in {v} frame(s), none of them sampled by a scoring window" if np.isnan(s) else ""
            for s, v in zip(scores[order], visible)]
    return pd.DataFrame({"track_id": track_ids[order], "score": scores[order], "rank": np.arange(1, len(order) + 1),
                         "frames_visible": visible, "note": note})


def predict_video(video, out_dir, checkpoint=None, tracks_path=None, detect_every: int = 3, detector: str = "auto",
                  device=None, backbone=None, draw: bool = True) -> dict:
    """Rank the people of ``video``; writes ranking.csv, ranking.json, tracks.txt and (``draw``) annotated.mp4.
    Ranking decodes each frame once; drawing the ranking on the video needs the final scores, so it reads the
    video a second time."""
    checkpoint = Path(checkpoint) if checkpoint else newest_checkpoint()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads((checkpoint / "model.json").read_text())
    people = GivenTracks(tracks_path) if tracks_path else DetectedTracks(detector, detect_every)
    footage, scores = rank_people(video, people, checkpoint, device, backbone=backbone)
    tracks, info = footage.tracks, footage.info
    if len(tracks.ids) == 0:
        raise RuntimeError(f"{video}: no person was detected or tracked. Fix: pass --tracks with a MOT file")
    stride = training_stride(meta)
    ranking = ranking_table(tracks.ids, scores, tracks.valid.sum(0))
    ranking.to_csv(out_dir / "ranking.csv", index=False)
    write_mot(tracks, out_dir / "tracks.txt")
    written = (annotate(video, out_dir / "annotated.mp4", tracks, scores, info["fps"], info["width"], info["height"])
               if draw else None)
    result = {"video": str(video), "checkpoint": str(checkpoint), "frames": info["frames"], "frames_written": written,
              "tracks_source": info["tracks_source"],
              "frame_stride": stride,
              "windows": len(window_indices(info["frames"], meta["features"]["features"]["num_frames"], stride)),
              # None when no track could be scored (all seen only in frames no window sampled).
              "vip_track_id": int(ranking.track_id.iloc[0]) if np.isfinite(scores).any() else None,
              "ranking": [{**row, "score": None if np.isnan(row["score"]) else row["score"]}
                          for row in ranking.astype({"track_id": int, "rank": int, "frames_visible": int}).to_dict("records")]}
    (out_dir / "ranking.json").write_text(json.dumps(result, indent=1, default=float))
    log.info("%s: %d tracks, VIP: track %s", video, len(tracks.ids), result["vip_track_id"])
    return result
