# Checkpoints: the embedded self-supervised pretraining of each source whose catalog entry gives no
# file (MoCo v2, SimCLR, BYOL, DINO, DenseCL, written in the upstream layout), and the import of every
# source into backbone keys (models/pretrained/<source>.pt).


rule pretrain:
    input:
        data=lambda wildcards: domain_input(pretrain_domain(wildcards)),
        check=lambda wildcards: domain_check(pretrain_domain(wildcards)),
    output:
        str(plan.embedded_checkpoint_path("{source}")),
    log:
        "logs/pretrain/{source}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("pretrain"),
        domain=pretrain_domain,
    threads: TRAIN_THREADS
    # every run waits for a pretraining: start them first, so that no chain of runs (e.g. source 2's,
    # behind the Swin's SimMIM) is left to run alone at the end on an otherwise idle machine
    priority: 10
    conda:
        CONDA_ENV
    shell:
        "mtwork pretrain {params.args} --source {wildcards.source} --data {input.data:q} --domain {params.domain:q} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


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
