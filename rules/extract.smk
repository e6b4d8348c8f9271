rule embedded_backbone:
    output:
        directory(f"{FEATURES}/backbone"),
    params:
        embedded=json.dumps(config["features"]["embedded"]),
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
        # A shard's key is the hash of its content: an existing store stays valid however new the list file is.
        shard=ancient(f"{PREPARE}/shards/{{shard}}.json"),
        backbone=backbone_input,
    output:
        directory(f"{FEATURES}/{{shard}}.zarr"),
    params:
        config=lambda wildcards: stage_config("extract"),
        backbone=BACKBONE,
        stage_hash=HASHES["extract"],
        max_array_bytes=config["data"]["max_array_bytes"],
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
        "python -m svip_core.cli with-gpus {resources.gpu} -- python workflow_scripts/extract.py --config {params.config:q} --shard {input.shard} "
        "--backbone {params.backbone:q} --out {output} --stage-hash {params.stage_hash} "
        "--max-array-bytes {params.max_array_bytes} --log-file {log} 2>> {log}"
