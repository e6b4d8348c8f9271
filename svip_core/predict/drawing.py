"""The annotated video: every track's box and score, the VIP in thick red."""
from __future__ import annotations

import numpy as np

from svip_core.video.frames import VideoWriter, read_frames
from svip_core.video.tracks import Tracks


def annotate(video, out_path, tracks: Tracks, scores: np.ndarray, fps: float, width: int, height: int) -> int:
    """Write the video with every track's box and score; the VIP in thick red. Returns frames written."""
    import cv2
    import matplotlib

    finite = np.nan_to_num(scores, nan=0.0)
    vip = int(np.argmax(finite)) if np.isfinite(scores).any() else -1
    colours = (np.array(matplotlib.colormaps["viridis"](finite / max(finite.max(initial=0), 1e-9)))[:, :3] * 255)[:, ::-1]
    writer = VideoWriter(out_path, fps, width, height)
    written = 0
    for t, frame in enumerate(read_frames(video, reuse=True)):
        for k in np.flatnonzero(tracks.valid[t]):
            x1, y1, x2, y2 = tracks.boxes[t, k].astype(int)
            is_vip = k == vip
            colour = (0, 0, 255) if is_vip else tuple(int(c) for c in colours[k])
            cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 4 if is_vip else 2)
            score = f"{scores[k]:.2f}x" if np.isfinite(scores[k]) else "not scored"
            label = f"{'VIP ' if is_vip else ''}#{tracks.ids[k]} {score}"
            cv2.putText(frame, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2 if is_vip else 1)
        writer.write(frame)
        written += 1
    writer.close()
    return written
