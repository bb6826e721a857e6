# Checkpoints: the embedded MoCo v2 pretraining (when the catalog gives no file) and the import of
# every source into backbone keys (models/pretrained/<source>.pt).


rule pretrain_moco_v2:
    input:
        data=dataset_input(SOURCE_DOMAIN),
        check=str(plan.data_check_path(SOURCE_DOMAIN)),
    output:
        EMBEDDED_MOCO,
    log:
        "logs/pretrain_moco_v2.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("pretrain_moco_v2"),
    threads: TRAIN_THREADS
    conda:
        CONDA_ENV
    shell:
        "mtwork pretrain moco_v2 {params.args} --data {input.data:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule import_checkpoint:
    input:
        upstream_input,
    output:
        str(plan.pretrained_path("{source}")),
    log:
        "logs/import_checkpoint/{source}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("import_checkpoint"),
    conda:
        CONDA_ENV
    shell:
        "mtwork import-checkpoint {params.args} --source {wildcards.source} {output:q} > {log:q} 2>&1"
