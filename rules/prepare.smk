checkpoint prepare:
    output:
        manifest=f"{PREPARE}/manifest.parquet",
        shards=directory(f"{PREPARE}/shards"),
    params:
        out_dir=output_dir("manifest"),
        config=lambda wildcards: stage_config("prepare"),
        data_fingerprint=data_fingerprint(),
    log:
        f"{PREPARE}/logs/prepare.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python workflow_scripts/prepare.py --config {params.config:q} --out-dir {params.out_dir} --log-file {log} 2>> {log}"
