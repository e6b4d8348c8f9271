"""What one ``svip predict`` call works on: its videos (named, or found in named folders), each one's tracks file
and output folder. Light on purpose: the command checks all of it before loading any model."""
from __future__ import annotations

from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm")


def video_jobs(paths: list, tracks=None, out=None) -> list[tuple[Path, Path | None, Path]]:
    """(video, its tracks file or None, its output folder) for every video named or inside a named folder.
    One video: ``tracks`` is its MOT file and ``out`` its folder (default results/predict/<name>). Several:
    ``tracks`` is a folder of ``<video name>.txt`` files (a video without one is detected and tracked) and each
    video's outputs go to ``<out>/<video name>/``."""
    videos = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no video in that folder ({', '.join(VIDEO_SUFFIXES)}). Fix: name the "
                                 "videos or their folder")
            videos += found
        else:
            videos.append(path)
    if len(videos) == 1 and not (tracks and Path(tracks).is_dir()):
        return [(videos[0], Path(tracks) if tracks else None, Path(out or Path("results") / "predict" / videos[0].stem))]
    names = [v.stem for v in videos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several videos are named {', '.join(twice)}: their outputs would share a folder. Fix: "
                         "rename them or predict them in separate calls")
    if tracks and not Path(tracks).is_dir():
        raise ValueError(f"--tracks {tracks}: with several videos give a folder of <video name>.txt MOT files")
    root = Path(out or Path("results") / "predict")
    return [(v, (Path(tracks) / f"{v.stem}.txt") if tracks and (Path(tracks) / f"{v.stem}.txt").is_file() else None,
             root / v.stem) for v in videos]
