"""The ``svip`` command: the library's verbs, usable without Snakemake."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import svip_core
from svip_core.config import ConfigError, load_config
from svip_core.stages import STAGES, stage_dir, stage_hash


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is None or the help already says what happens without it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _config(args, assets: bool = True):
    # Layered exactly as Snakemake layers `--configfile` over the Snakefile's config.yaml. ``assets``: the
    # command needs the backbone (to hash or run it), so check that it can be loaded.
    return load_config(None, args.configfile, assets)


def cmd_hash(args) -> int:
    config = _config(args)
    print(stage_dir(config, args.stage) if args.path else stage_hash(config, args.stage))
    return 0


def cmd_synth(args) -> int:
    from svip_core.synthetic.generate import write_dataset

    s = _config(args, assets=False)["synthetic"]
    paths = write_dataset(args.out, s["clips"], s["frames"], s["persons"], s["height"], s["width"],
                          s["categories"], s["seed"] if args.seed is None else args.seed, s["scene"])
    print(f"wrote {len(paths)} clips under {args.out}")
    return 0


def cmd_validate(args) -> int:
    from svip_core.config import missing_dataset, no_clips
    from svip_core.dataset.containers import SPLITS, container_clips, list_clips
    from svip_core.dataset.manifest import resolve_duplicates, unlisted_files, validate_files, verdict_counts

    path = Path(args.path)
    if not path.exists():
        print(missing_dataset(path), file=sys.stderr)
        return 1
    if path.is_file():      # its split by where it lies (unlabelled/x.npz, unlabelled.h5): whether a label is due
        split = next((name for name in (path.parent.name, path.stem) if name in SPLITS), "")
        files = [(split, a) for a in container_clips(path)]
    else:
        files = list_clips(path)
    if not files:
        print(no_clips(path), file=sys.stderr)
        return 1
    manifest = resolve_duplicates(validate_files(files, _config(args, assets=False)["data"]["max_array_bytes"]), "drop")
    rejected = manifest[manifest.verdict == "rejected"]
    if args.json:
        import json

        files = unlisted_files(manifest)
        print(json.dumps({"clips": int((~files).sum()), "accepted": len(manifest) - len(rejected),
                          "rejected": int((~files[rejected.index]).sum()), "unreadable_files": int(files.sum()),
                          "rejections": [{"path": r.path, "reason": r.reason} for r in rejected.itertuples()]},
                         indent=1))
        return 1 if len(rejected) else 0
    # At 10,000 clips a line per accepted clip would drown the rejections: those only, unless --verbose.
    for row in (manifest if args.verbose else rejected).itertuples():
        print(f"{row.verdict:9s} {row.path}" + (f"  {row.reason}" if row.reason else ""))
    print(verdict_counts(manifest))
    return 1 if len(rejected) else 0


def cmd_predict(args) -> int:
    from svip_core.predict.model_choice import describe_model, model_caveat, newest_checkpoint

    checkpoint = args.checkpoint
    if checkpoint is None:
        # The model this folder's config trains (full model, first seed) when it is there, else the newest one.
        try:
            configured = stage_dir(_config(args), "train") if Path("config.yaml").exists() or args.configfile else None
        except (OSError, ValueError, RuntimeError) as e:    # for example its data is on another machine
            print(f"svip predict: the config's model cannot be named ({str(e).splitlines()[0]}); using the newest "
                  f"trained model", file=sys.stderr)
            configured = None
        checkpoint = configured if configured and (configured / "model.safetensors").is_file() else newest_checkpoint()
    from svip_core.predict.jobs import video_jobs
    from svip_core.video.tracks import parse_mot

    jobs = video_jobs(args.videos, args.tracks, args.out)
    for _, tracks, _ in jobs:      # a bad line is named at once, before the model and backbone load (seconds)
        if tracks:
            parse_mot(tracks)
    print(describe_model(checkpoint), flush=True)
    caveat = model_caveat(checkpoint)
    if caveat:
        print(caveat, flush=True)
    from svip_core.predict.pipeline import predict_video  # the model's libraries: seconds to import

    failed = []
    for video, tracks, out in jobs:
        if len(jobs) > 1:
            print(f"\n{video} (tracks: {tracks or 'detected and tracked'})", flush=True)
        try:
            result = predict_video(video, out, checkpoint, tracks, args.detect_every, args.detector,
                                   backbone=args.backbone, draw=not args.no_video)
        except (OSError, ValueError, RuntimeError) as e:   # one unreadable video does not stop the others
            if len(jobs) == 1:
                raise
            print(f"svip predict: {video}: {str(e).splitlines()[0]}", file=sys.stderr)
            failed.append(str(video))
            continue
        for row in result["ranking"]:
            score = f"score {row['score']:.2f}x chance" if row["score"] is not None else row["note"]
            print(f"rank {row['rank']:2d}  track {row['track_id']:4d}  {score}  visible in {row['frames_visible']} frames")
        vip = f"track {result['vip_track_id']}" if result["vip_track_id"] is not None else "none (no track was scored)"
        written = "ranking.csv and ranking.json" if args.no_video else "ranking.csv, ranking.json and annotated.mp4"
        print(f"VIP: {vip}. Wrote {out}/{written}")
    if failed:
        print(f"svip predict: {len(failed)} of {len(jobs)} videos failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_import(args) -> int:
    from svip_core.video.import_clip import video_to_clip

    if (args.vip is None) != (args.split == "unlabelled"):
        print("svip import: " + ("--vip TRACK names the VIP of a clip of the train, val or test split; give it, or "
                                 "write a clip without a label with --split unlabelled" if args.vip is None else
                                 "a clip of the unlabelled split has no VIP: drop --vip, or choose train, val or test"),
              file=sys.stderr)
        return 2
    path = video_to_clip(args.video, args.tracks, args.vip, args.out, args.split, args.video_id, args.category,
                         args.max_frames, args.max_side)
    print(f"wrote {path}")
    return 0


def cmd_convert(args) -> int:
    from svip_core.dataset.convert import convert_dataset

    result = convert_dataset(args.src, args.dst, args.to, _config(args, assets=False)["data"]["max_array_bytes"])
    for address, reason in result["refused"]:
        print(f"refused  {address}  {reason}", file=sys.stderr)
    print(f"wrote {result['converted']} clips to {args.dst} ({result['layout']} layout)"
          + (f"; {len(result['refused'])} refused (not copied)" if result["refused"] else ""))
    return 1 if result["refused"] else 0


def _after_dashes(words: list[str]) -> list[str]:
    """The command after an optional ``--`` separator."""
    return words[1:] if words[:1] == ["--"] else words


def cmd_with_gpus(args) -> int:
    import logging

    from svip_core.devices import run_with_gpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = _after_dashes(args.command_line)
    if not command:
        print("svip with-gpus: no command given (svip with-gpus N -- CMD ...)", file=sys.stderr)
        return 2
    return run_with_gpus(args.count, command, args.lock_dir)


def cmd_torchrun(args) -> int:
    from svip_core.launch import nodes_problem, run_torchrun

    problem = nodes_problem(args.nodes)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import logging

    from svip_core.logs import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return run_torchrun(args.nproc, _after_dashes(args.command_line), max_restarts=args.max_restarts)


CONFIGFILE_HELP = ("config YAML layered over ./config.yaml as `snakemake --configfile FILE` does (repeatable, "
                   "before or after the command; default: ./config.yaml alone)")


def _synthetic_settings() -> str:
    """The synthetic benchmark's settings, for `svip synth --help`: each key, its value in ./config.yaml (the
    schema's default without one) and, where the schema says it, its meaning."""
    import yaml

    from svip_core.config import SCHEMA_PATH

    section = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["synthetic"]["properties"]
    try:
        values, source = load_config(None, [], assets=False)["synthetic"], "./config.yaml"
    except (OSError, ValueError):
        values, source = {}, "defaults: no usable ./config.yaml here"
    lines = [f"settings (config.yaml's synthetic section, or a --configfile layered over it; {source}):"]
    for key, spec in section.items():
        value = values.get(key, spec["default"])
        if "properties" in spec:          # in the schema's order, each part defaulted
            value = {k: value.get(k, v["default"]) for k, v in spec["properties"].items()}
        shown = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip().removesuffix("\n...")
        lines.append(f"  {key}: {shown}" + (f"  ({spec['description']})" if "description" in spec else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    words = sys.argv[1:] if argv is None else list(map(str, argv))
    parser = argparse.ArgumentParser(prog="svip", description=__doc__)
    parser.add_argument("--version", action="version", version=f"svip {svip_core.__version__}")
    parser.add_argument("--configfile", action="append", default=[], metavar="FILE", help=CONFIGFILE_HELP)
    # Every command takes the global options after its name too (`svip synth OUT --configfile FILE`): they
    # land in a dest of their own and are layered after those given before it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--configfile", action="append", dest="configfile_after", default=[], metavar="FILE",
                       help=CONFIGFILE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[after], **kwargs)

    p = command("hash", help="print the hash a stage gets from the current config")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--path", action="store_true", help="print the stage's results folder instead")
    p.set_defaults(func=cmd_hash)

    p = command("synth", help="write the synthetic benchmark (config's synthetic section)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       # Reading the config costs a second: only for the help that shows it.
                       epilog=_synthetic_settings() if {"-h", "--help"} & set(words) else None)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_synth)

    p = command("validate", help="check clips against the MSG_VIP contract; exit 1 if any is rejected")
    p.add_argument("path", help="a dataset folder (train/ val/ test/ or train.h5 ...), one .npz or one .h5 file")
    p.add_argument("--verbose", action="store_true", help="list every clip, not only the rejected ones")
    p.add_argument("--json", action="store_true", help="print the counts and rejections as JSON")
    p.set_defaults(func=cmd_validate)

    p = command("convert", help="copy a dataset between the .npz and HDF5 layouts, losslessly")
    p.add_argument("src", help="dataset folder: <split>/*.npz, or <split>.h5 / <split>/*.h5")
    p.add_argument("dst", help="folder to write; clips keep their names (file stem <-> HDF5 group)")
    p.add_argument("--to", choices=["h5", "npz"], help="layout to write (default: the one SRC does not use)")
    p.set_defaults(func=cmd_convert)

    p = command("predict", help="rank the people of a video with a trained model",
                       formatter_class=_ShowDefaults)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files OpenCV reads (.mp4, .avi, ...) or folders "
                                                              "of them")
    p.add_argument("--tracks", help="MOTChallenge tracks (several videos: a folder of <video name>.txt files); "
                                    "without them people are detected and tracked")
    p.add_argument("--checkpoint", help="a train results folder (default: the full model config.yaml trains, when "
                                        "trained, else the newest full model under results/train/)")
    p.add_argument("--out", help="output folder (default: results/predict/<video name>; several videos: "
                                 "<out>/<video name>, out defaulting to results/predict)")
    p.add_argument("--detect-every", type=int, default=3,
                   help="run the detector on every k-th frame (1: best tracks, slowest; see README, Tracking)")
    p.add_argument("--detector", default="auto", choices=["auto", "ssdlite", "hog"],
                   help="auto: the SSDLite pedestrian detector when installed, else OpenCV HOG")
    p.add_argument("--backbone", help="the backbone folder, when it moved since the model's features were made "
                                      "(checked against the weights recorded with them)")
    p.add_argument("--no-video", action="store_true",
                   help="skip annotated.mp4: ranking decodes each frame once, drawing the ranking reads the video "
                        "again")
    p.set_defaults(func=cmd_predict)

    p = command("import", help="turn a video and its tracks into a clip of the MSG_VIP format")
    p.add_argument("video")
    p.add_argument("tracks", help="MOTChallenge tracks of the video")
    p.add_argument("out", help="dataset folder; the clip goes to OUT/SPLIT/VIDEO_ID.npz")
    p.add_argument("--vip", type=int, help="track id of the most important person (required, but for --split "
                                           "unlabelled: a clip for self-training, without a label)")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "unlabelled"])
    p.add_argument("--video-id")
    p.add_argument("--category", default="unknown")
    p.add_argument("--max-frames", type=int, default=120)
    p.add_argument("--max-side", type=int, default=384)
    p.set_defaults(func=cmd_import)

    p = command("with-gpus", help="run a command on N GPUs of its own (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("count", type=int)
    p.add_argument("--lock-dir", help="folder of the machine's GPU lock files (default: $SVIP_GPU_LOCK_DIR, else "
                                      "/tmp/svip-gpu-slots)")
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_with_gpus)

    p = command("torchrun", help="run a training script under torchrun, across SLURM nodes when allocated")
    p.add_argument("--nproc", type=int, required=True, help="processes per node")
    p.add_argument("--nodes", type=int, default=1, help="nodes the run must span (train.nodes): a SLURM allocation's")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="across nodes: restarts of the step after a rank or a node's torchrun fails (train.max_restarts)")
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- SCRIPT ARGS")
    p.set_defaults(func=cmd_torchrun)

    args = parser.parse_args(argv)
    args.configfile += args.configfile_after
    try:
        return args.func(args)
    except ConfigError as e:        # every problem of the config, a line each
        print("\n".join(f"svip {args.command}: {line}" for line in e.problems), file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as e:  # bad input: one clear line, no traceback
        print(f"svip {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
