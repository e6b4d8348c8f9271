"""Tracks scored against ground truth by the CLEAR-MOT and identity metrics (py-motmetrics).

Distances are computed here from ``iou`` (1 - IoU, no match below ``min_iou``) rather than by
``motmetrics.distances``, whose 1.4.0 release calls ``np.asfarray``, gone from NumPy 2.
"""
from __future__ import annotations

import numpy as np

from svip_core.video.tracks import Tracks, iou

METRICS = {"mota": "mota", "idf1": "idf1", "id_switches": "num_switches", "precision": "precision",
           "recall": "recall", "false_positives": "num_false_positives", "misses": "num_misses",
           "ground_truth_boxes": "num_objects"}


def mot_metrics(predicted: Tracks, truth: Tracks, min_iou: float = 0.5) -> dict:
    """MOTA, IDF1, ID switches, precision, recall and counts of ``predicted`` against ``truth`` (same frames)."""
    import motmetrics

    if predicted.valid.shape[0] != truth.valid.shape[0]:
        raise ValueError(f"predicted tracks cover {predicted.valid.shape[0]} frames, the ground truth "
                         f"{truth.valid.shape[0]}")
    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for t in range(truth.valid.shape[0]):
        gt, hyp = truth.valid[t], predicted.valid[t]
        distance = 1 - iou(truth.boxes[t, gt], predicted.boxes[t, hyp])
        distance[distance > 1 - min_iou] = np.nan
        accumulator.update(truth.ids[gt].tolist(), predicted.ids[hyp].tolist(), distance)
    summary = motmetrics.metrics.create().compute(accumulator, metrics=list(METRICS.values()))
    return {name: float(summary[column].iloc[0]) for name, column in METRICS.items()}
