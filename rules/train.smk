rule train:
    input:
        stores=feature_stores,
        manifest=f"{PREPARE}/manifest.parquet",
    output:
        model=f"{TRAIN}/model.safetensors",
        meta=f"{TRAIN}/model.json",
        curves=f"{TRAIN}/metrics.csv",
    params:
        out_dir=output_dir("model"),
        config=lambda wildcards: stage_config("train"),
        nproc=config["train"]["nproc"],
    log:
        f"{TRAIN}/logs/train.log",
    threads: config["train"]["nproc"]
    resources:
        mem_mb=8000,
        gpu=config["train"]["nproc"],
        runtime=720,
    conda:
        ENV
    shell:
        "torchrun --standalone --nproc_per_node={params.nproc} workflow_scripts/train.py "
        "--config {params.config:q} --stores {input.stores} --out-dir {params.out_dir} --log-file {log} 2>> {log}"
