checkpoint prepare:
    input:
        clip_files(),
    output:
        manifest=f"{PREPARE}/manifest.parquet",
        shards=directory(f"{PREPARE}/shards"),
    params:
        config=lambda wildcards: stage_config("prepare"),
    log:
        f"{PREPARE}/logs/prepare.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python workflow_scripts/prepare.py --config {params.config:q} --out-dir {PREPARE} --log {log} 2>> {log}"
