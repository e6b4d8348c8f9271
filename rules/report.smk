rule report:
    input:
        all_run_results(),
        manifest=f"{PREPARE}/manifest.parquet",
        stores=labelled_stores,
    output:
        curves=report(f"{REPORT}/training_curves.png", caption="../captions/training_curves.rst", category="Training"),
        top1=report(f"{REPORT}/top1_vs_baselines.png", caption="../captions/top1.rst", category="Evaluation"),
        table=report(f"{REPORT}/metrics_table.html", caption="../captions/metrics_table.rst", category="Evaluation"),
        people=report(f"{REPORT}/top1_by_people.png", caption="../captions/by_people.rst", category="Evaluation"),
        category=report(f"{REPORT}/top1_by_category.png", caption="../captions/by_category.rst", category="Evaluation"),
        rejected=report(f"{REPORT}/rejected_clips.html", caption="../captions/rejected.rst", category="Data"),
        ablations=report(f"{REPORT}/ablations.png", caption="../captions/ablations.rst", category="Evaluation"),
        ablation_table=report(f"{REPORT}/ablations.html", caption="../captions/ablations.rst", category="Evaluation"),
        variant_curves=report(f"{REPORT}/variant_curves.png", caption="../captions/variant_curves.rst", category="Training"),
        gallery=report(f"{REPORT}/gallery.png", caption="../captions/gallery.rst", category="Gallery"),
        headline=f"{REPORT}/headline.json",
        **learning_curve_outputs(),
    params:
        out_dir=output_dir("curves"),
        config=lambda wildcards: stage_config("report"),
        runs=runs_json,
        primary=next(iter(RUNS)),
        gallery_size=config["report"]["gallery_size"],
    log:
        f"{REPORT}/logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python workflow_scripts/report.py --config {params.config:q} --manifest {input.manifest} "
        "--runs {params.runs:q} --primary {params.primary:q} --stores {input.stores} --gallery-size {params.gallery_size} --out-dir {params.out_dir} --log-file {log} 2>> {log}"
