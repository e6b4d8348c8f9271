"""One streaming pass over a raw video that decodes each frame once and keeps none: the people's boxes (read from
a MOT file, or detected and tracked as the frames go by) and, for every frame a scoring window samples, the
features of the people in it.

Which frames are sampled depends on the video's length only through its last window (``predict.windows``), and a
tracked box is final only once the person is seen again or gone for good (``settle_frames``). So the pass holds
the last window's span of resized frames, and the sampled frames whose boxes may still change; memory is bounded
by a window and the tracker's gap, whatever the video's length.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from svip_core.features.extract import resize_frames
from svip_core.logs import progress
from svip_core.predict.windows import on_regular_windows, window_indices
from svip_core.video.detection import load_detector
from svip_core.video.frames import read_frames, release_freed_memory, video_info
from svip_core.video.tracking import PeopleTracker
from svip_core.video.tracks import Tracks, mot_tracks, parse_mot

# (frames (F, 3, h, w) uint8, boxes (F, M, 4) xyxy in [0, 1], visible (F, M)) -> (P, D) features of the P visible
# (frame, person) pairs, in np.nonzero(visible) order.
Featurize = Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor]


class GivenTracks:
    """People from a MOTChallenge file: every box is known before the video is read."""

    settle_frames = 0

    def __init__(self, path):
        self.path, self.table = path, parse_mot(path)
        self.known = mot_tracks(self.table, int(self.table.frame.max()), path)    # until the video's length is known
        self.source = str(path)

    def step(self, frame_bgr: np.ndarray) -> None:
        pass

    def boxes_at(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """keys (K,) = track slots, boxes (F, K, 4) pixels, valid (F, K) at ``frames`` (F,)."""
        inside = frames < len(self.known.valid)
        at = frames.clip(max=len(self.known.valid) - 1)
        return (np.arange(len(self.known.ids)), self.known.boxes[at] * inside[:, None, None],
                self.known.valid[at] & inside[:, None])

    def finish(self, num_frames: int) -> tuple[Tracks, np.ndarray]:
        """The tracks over the video's ``num_frames`` decoded frames, and each key's track (K,)."""
        tracks = mot_tracks(self.table, num_frames, self.path)
        return tracks, np.arange(len(tracks.ids))


class DetectedTracks:
    """People detected every ``detect_every`` frames and tracked (``video.tracking.PeopleTracker``)."""

    def __init__(self, detector: str = "auto", detect_every: int = 3):
        found = load_detector(detector)
        self.tracker = PeopleTracker(found, detect_every=detect_every)
        self.settle_frames = self.tracker.settle_frames
        self.source = f"detected ({found.name}, every {self.tracker.detect_every} frames) + DeepSORT"
        self.step, self.boxes_at = self.tracker.step, self.tracker.boxes_at

    def finish(self, num_frames: int) -> tuple[Tracks, np.ndarray]:
        """The linked, confirmed tracks, and each observed key's track (-1: never confirmed)."""
        tracks = self.tracker.tracks()
        slot_of_key = np.full(max(self.tracker.observations, default=0) + 1, -1)
        for key, slot in self.tracker.slots.items():
            slot_of_key[key] = slot
        return tracks, slot_of_key


@dataclasses.dataclass
class Footage:
    """What one pass learnt of a video: its tracks, and the features of every track in every sampled frame it
    is seen in (keys (P,) = frame * K + track, sorted; features (P, D) float16 on the CPU)."""

    tracks: Tracks
    keys: np.ndarray
    features: torch.Tensor
    info: dict


class _FeatureTable:
    """Features of (frame, person key) pairs as they are computed, with the box each was computed for, and which
    frames are done."""

    def __init__(self, people, featurize: Featurize, size: tuple[int, int]):
        self.people, self.featurize, self.scale = people, featurize, np.array([*size, *size], np.float32)
        self.frames, self.keys, self.boxes, self.features, self.done = [], [], [], [], set()

    def add(self, frames: dict[int, torch.Tensor]) -> None:
        """Compute the features of every person seen in ``frames`` {frame: (3, h, w) uint8}."""
        index = np.array(sorted(frames), np.int64)
        keys, boxes, visible = self.people.boxes_at(index)
        if visible.any():
            t, m = np.nonzero(visible)
            self.features.append(self.featurize(torch.stack([frames[int(i)] for i in index]),
                                                np.clip(boxes / self.scale, 0, 1) * visible[..., None], visible))
            self.frames.append(index[t])
            self.keys.append(keys[m])
            self.boxes.append(boxes[t, m])
        self.done.update(int(i) for i in index)

    def forget_before(self, frame: int) -> None:
        """Frames before ``frame`` are never asked for again; their features stay."""
        self.done = {t for t in self.done if t >= frame}

    def table(self, tracks: Tracks, slot_of_key: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """(keys (P,) = frame * K + track, sorted; features (P, D)) of the pairs whose box is the final track's
        (a person never confirmed, or a link decided otherwise after the frame was done, is left out: unseen)."""
        if not self.features:
            return np.zeros(0, np.int64), torch.zeros(0, 0, dtype=torch.float16)
        frames, keys, boxes = np.concatenate(self.frames), np.concatenate(self.keys), np.concatenate(self.boxes)
        slot = slot_of_key[keys]
        final = tracks.boxes[frames, slot.clip(0)]
        kept = np.flatnonzero((slot >= 0) & tracks.valid[frames, slot.clip(0)]
                              & np.isclose(final, boxes, rtol=0, atol=1e-3).all(1))
        code = frames * len(tracks.ids) + slot
        order = kept[np.argsort(code[kept], kind="stable")]
        return code[order], torch.cat(self.features)[torch.from_numpy(order)]


def read_footage(video, people, featurize: Featurize, frame_size, num_frames: int, stride: float,
                 batch_frames: int = 16) -> Footage:
    """Decode ``video`` once: step ``people`` (``GivenTracks`` or ``DetectedTracks``) through every frame and
    feed the frames the scoring windows sample (``windows.window_indices``, ``num_frames`` samples ``stride``
    frames apart) to ``featurize``, ``batch_frames`` at a time, once their boxes are settled."""
    info = video_info(video)
    last_span = math.ceil(stride * (num_frames - 1)) + 2      # the last window's frames, whatever the video's length
    recent: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()
    waiting: dict[int, torch.Tensor] = {}                     # sampled frames whose boxes may still change
    table, T, size = None, 0, None
    for t, frame in enumerate(progress(read_frames(video, reuse=True), total=info["frames"], desc="read video",
                                       unit="frame")):
        if table is None:
            size = (frame.shape[1], frame.shape[0])
            table = _FeatureTable(people, featurize, size)
        people.step(frame)
        rgb = torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)
        recent[t] = resize_frames(rgb[None], frame_size)[0]
        if len(recent) > last_span:
            recent.popitem(last=False)
        if on_regular_windows(np.array([t]), num_frames, stride)[0]:
            waiting[t] = recent[t]
        settled = [f for f in waiting if f <= t - people.settle_frames]
        if len(settled) >= batch_frames:
            table.add({f: waiting.pop(f) for f in settled})
            table.forget_before(t - last_span)
            release_freed_memory()     # a batch's activations: without this the heap's high-water mark creeps up
        T = t + 1
    if T == 0:
        raise ValueError(f"{video}: no frame could be decoded. Fix: convert it, e.g. `ffmpeg -i IN -c:v libx264 "
                         f"OUT.mp4`")
    windows = window_indices(T, num_frames, stride)
    held = {**waiting, **recent}              # every sampled frame not yet done is here (the module docstring)
    left = [f for f in map(int, np.unique(windows[windows >= 0])) if f in held and f not in table.done]
    for start in range(0, len(left), batch_frames):
        table.add({f: held[f] for f in left[start:start + batch_frames]})
    tracks, slot_of_key = people.finish(T)
    keys, features = table.table(tracks, slot_of_key)
    info = {**info, "frames": T, "width": size[0], "height": size[1], "tracks_source": people.source}
    return Footage(tracks, keys, features, info)
