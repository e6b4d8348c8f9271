"""Real footage with human-made ground truth, for tests and benchmarks: three MOTChallenge 2015 sequences.

TUD-Campus and TUD-Stadtmitte (video and tracks) lie in ``data/mot15``; PETS09-S2L1's tracks lie there too,
and its video is OpenCV's ``vtest.avi``, which Debian's ``opencv-doc`` package ships: fetched once with
``apt-get download`` into a cache folder. Frame k of each video is frame k of its ground truth.
"""
from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

MOT15 = Path(__file__).resolve().parents[1] / "data" / "mot15"
VTEST_IN_DEB = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
SEQUENCES = ("PETS09-S2L1", "TUD-Campus", "TUD-Stadtmitte")


def fetch_vtest(cache) -> Path:
    """OpenCV's vtest.avi, taken from Debian's opencv-doc package once and kept as ``cache``/vtest.avi."""
    target = Path(cache) / "vtest.avi"
    if target.exists():
        return target
    work = Path(cache) / "download"
    work.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["apt-get", "download", "opencv-doc"], cwd=work, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("opencv-doc_*.deb"))
    subprocess.run(f"dpkg-deb --fsys-tarfile {deb.name} | tar -x ./{VTEST_IN_DEB}", shell=True, cwd=work, check=True)
    shutil.move(work / VTEST_IN_DEB, target)
    shutil.rmtree(work)
    return target


def sequence(name: str, cache) -> dict:
    """{"video", "ground_truth", "frames", "fps", "width", "height"} of a MOT15 sequence."""
    folder = MOT15 / name
    info = configparser.ConfigParser()
    info.read(folder / "seqinfo.ini")
    seq = info["Sequence"]
    video = fetch_vtest(cache) if name == "PETS09-S2L1" else folder / f"{name}.mp4"
    return {"name": name, "video": Path(video), "ground_truth": folder / "gt" / "gt.txt", "frames": int(seq["seqLength"]),
            "fps": float(seq["frameRate"]), "width": int(seq["imWidth"]), "height": int(seq["imHeight"])}
