rule evaluate:
    input:
        unpack(trained_model),
        stores=labelled_stores,
    output:
        metrics="results/evaluate/{eval_hash}/metrics.json",
        predictions="results/evaluate/{eval_hash}/predictions.parquet",
    params:
        config=evaluate_config,
        out_dir=output_dir("metrics"),
        train_dir=input_dir("model"),
    log:
        "results/evaluate/{eval_hash}/logs/evaluate.log",
    threads: 1
    resources:
        mem_mb=4000,
        gpu=1,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m svip_core.cli with-gpus {resources.gpu} -- python workflow_scripts/evaluate.py "
        "--config {params.config:q} --stores {input.stores} --train-dir {params.train_dir} "
        "--out-dir {params.out_dir} --log-file {log} 2>> {log}"
