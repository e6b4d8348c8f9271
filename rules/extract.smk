rule embedded_backbone:
    output:
        directory(f"{FEATURES}/backbone"),
    params:
        embedded=canonical(config["features"]["embedded"]),
    log:
        f"{FEATURES}/logs/backbone.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python workflow_scripts/backbone.py --embedded {params.embedded:q} --out-dir {output} --log-file {log} 2>> {log}"


rule extract:
    input:
        shard=shard_list,
        backbone=backbone_input,
    output:
        directory(f"{FEATURES}/{{shard}}.zarr"),
    params:
        config=lambda wildcards: stage_config("extract"),
        stage_hash=HASHES["extract"],
        settings=run_settings_param("extract"),
    log:
        f"{FEATURES}/logs/{{shard}}.log",
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m svip_core.cli with-gpus {resources.gpu} -- python workflow_scripts/extract.py --config {params.config:q} "
        "--shard {input.shard} --settings {params.settings:q} --out {output} --stage-hash {params.stage_hash} "
        "--log-file {log} 2>> {log}"


# `snakemake features`: prepare and extract only, the feature stores the current config trains on (to extract
# on GPU nodes before training elsewhere, or to check a dataset's features without training on them).
rule features:
    input:
        train_stores,
