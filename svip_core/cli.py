"""The ``svip`` command: the library's verbs, usable without Snakemake."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import svip_core
from svip_core.stages import STAGES, load_config, stage_dir, stage_hash


def _config(args):
    return load_config(args.configfile)


def cmd_hash(args) -> int:
    config = _config(args)
    print(stage_dir(config, args.stage) if args.path else stage_hash(config, args.stage))
    return 0


def cmd_synth(args) -> int:
    from svip_core.io.synth import write_dataset

    s = _config(args)["synthetic"]
    paths = write_dataset(args.out, s["clips"], s["frames"], s["persons"], s["height"], s["width"],
                          s["categories"], s["seed"] if args.seed is None else args.seed)
    print(f"wrote {len(paths)} clips under {args.out}")
    return 0


def cmd_validate(args) -> int:
    from svip_core.io.manifest import list_clips, resolve_duplicates, validate_files

    path = Path(args.path)
    files = [("", path)] if path.is_file() else list_clips(path)
    if not files:
        print(f"{path}: no .npz clips found (expected {path}/train/*.npz, {path}/val/*.npz ...)", file=sys.stderr)
        return 1
    manifest = resolve_duplicates(validate_files(files, _config(args)["data"]["max_array_bytes"]), "drop")
    for row in manifest.itertuples():
        print(f"{row.verdict:9s} {row.path}" + (f"  {row.reason}" if row.reason else ""))
    bad = int((manifest.verdict == "rejected").sum())
    print(f"{len(manifest)} clips: {len(manifest) - bad} accepted, {bad} rejected")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="svip", description=__doc__)
    parser.add_argument("--version", action="version", version=f"svip {svip_core.__version__}")
    parser.add_argument("--configfile", default=None, help="config YAML (default: the project's config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("hash", help="print the hash a stage gets from the current config")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--path", action="store_true", help="print the stage's results folder instead")
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("synth", help="write the synthetic benchmark (config's synthetic section)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("validate", help="check clips against the MSG_VIP contract; exit 1 if any is rejected")
    p.add_argument("path", help="a dataset folder (train/ val/ test/) or one .npz file")
    p.set_defaults(func=cmd_validate)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
