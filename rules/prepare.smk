checkpoint prepare:
    output:
        manifest=f"{PREPARE}/manifest.parquet",
        shards=directory(f"{PREPARE}/shards"),
    params:
        out_dir=output_dir("manifest"),
        # The folder is named for the clips' content, so an edited dataset gets a new folder and this param
        # needs no fingerprint of its own.
        config=lambda wildcards: stage_config("prepare"),
        shared_shards=SHARDS,
    log:
        f"{PREPARE}/logs/prepare.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python workflow_scripts/prepare.py --config {params.config:q} --out-dir {params.out_dir} "
        "--shared-shards {params.shared_shards} --log-file {log} 2>> {log}"
