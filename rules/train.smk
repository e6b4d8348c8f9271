rule train:
    input:
        # Stores only: they are addressed by content, so training does not depend on where the clips lie.
        stores=train_stores,
    output:
        model="results/train/{train_hash}/model.safetensors",
        meta="results/train/{train_hash}/model.json",
        curves="results/train/{train_hash}/metrics.csv",
    params:
        config=train_config,
        out_dir=output_dir("model"),
        nproc=config["train"]["nproc"],
        settings=run_settings_param("train"),
        max_restarts=run_setting_param("train.max_restarts"),
    log:
        "results/train/{train_hash}/logs/train.log",
    threads: config["train"]["nproc"]
    resources:
        mem_mb=8000,
        # GPUs on this machine (svip with-gpus); under SLURM the profile sets gpu to 0 and gres asks for nproc GPUs
        # on every node (--gres is per node, --gpus would be per job).
        gpu=config["train"]["nproc"],
        gres=f"gpu:{config['train']['nproc']}",
        nodes=config["train"]["nodes"],
        **across_nodes_resources(config["train"]["nodes"]),
        runtime=720,
    conda:
        ENV
    shell:
        "python -m svip_core.cli with-gpus {resources.gpu} -- python -m svip_core.cli torchrun --nproc {params.nproc} --nodes {resources.nodes} "
        "--max-restarts {params.max_restarts} -- "
        "workflow_scripts/train.py "
        "--config {params.config:q} --settings {params.settings:q} --stores {input.stores} --out-dir {params.out_dir} "
        "--log-file {log} 2>> {log}"
