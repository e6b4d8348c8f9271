rule evaluate:
    input:
        stores=feature_stores,
        model=f"{TRAIN}/model.safetensors",
        meta=f"{TRAIN}/model.json",
    output:
        metrics=f"{EVALUATE}/metrics.json",
        predictions=f"{EVALUATE}/predictions.parquet",
    params:
        out_dir=output_dir("metrics"),
        train_dir=input_dir("model"),
        config=lambda wildcards: stage_config("evaluate"),
    log:
        f"{EVALUATE}/logs/evaluate.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "python workflow_scripts/evaluate.py --config {params.config:q} --stores {input.stores} "
        "--train-dir {params.train_dir} --out-dir {params.out_dir} --log-file {log} 2>> {log}"
