"""Report stage entry point: the figures and tables that the Snakemake HTML report shows."""
import argparse
import json
from pathlib import Path

from svip_core.logs import setup_logging
from svip_core.report import figures
from svip_core.stages import LEARNING_CURVE

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's resolved config as JSON")
p.add_argument("--manifest", required=True)
p.add_argument("--runs", required=True, help='JSON: {"<variant>/seed<s>": {"curves": CSV, "metrics": JSON}}, full model first')
p.add_argument("--primary", required=True, help="the run the headline figures show (the full model, first seed)")
p.add_argument("--stores", nargs="+", required=True)
p.add_argument("--gallery-size", type=int, default=4, help="best and worst clips shown")
p.add_argument("--out-dir", required=True)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
out = Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps(json.loads(args.config), indent=1))
runs = json.loads(args.runs)
primary = runs[args.primary]
runs = {args.primary: primary, **{name: runs[name] for name in sorted(runs) if name != args.primary}}
# The learning curve's runs (the full model at smaller sizes) are no variants of the model: they have a figure of
# their own, with the full model's runs at the full size.
curve = {name: r for name, r in runs.items() if name.startswith(LEARNING_CURVE)}
runs = {name: r for name, r in runs.items() if name not in curve}
if curve:
    figures.learning_curve({**curve, **{name: r for name, r in runs.items() if name.startswith("full/")}},
                           out / "learning_curve.png", out / "learning_curve.html")
figures.training_curves(primary["curves"], out / "training_curves.png")
figures.metrics_vs_baselines(primary["metrics"], out / "top1_vs_baselines.png", out / "metrics_table.html")
figures.by_group(primary["metrics"], "by_people", out / "top1_by_people.png")
figures.by_group(primary["metrics"], "by_category", out / "top1_by_category.png")
figures.rejected_table(args.manifest, out / "rejected_clips.html")
figures.gallery(primary["predictions"], args.manifest, args.stores, out / "gallery.png", args.gallery_size)
figures.ablations({name: r["metrics"] for name, r in runs.items()}, out / "ablations.png", out / "ablations.html")
figures.variant_curves({name: r["curves"] for name, r in runs.items()}, out / "variant_curves.png")
# Last: the workflow reads it to put the result on the report's first screen, and `make demo` prints it.
headline = figures.headline(primary["metrics"], {name: r["metrics"] for name, r in runs.items()}, args.manifest,
                            out / "rejected_clips.html")
(out / "headline.json").write_text(json.dumps(headline, indent=1))
