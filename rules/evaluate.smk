# Evaluation: every run on the source domain's val split (protocol mtl), and every run on each
# domain of data.dg_domains without any training there (protocol dg).


rule evaluate:
    input:
        final=run_file("{run}", RUN_FINAL),
        data=dataset_input(SOURCE_DOMAIN),
        check=str(plan.data_check_path(SOURCE_DOMAIN)),
        text=lv_text_input,
    output:
        str(plan.metrics_path("{run}", plan.PROTOCOL_MTL)),
    log:
        "logs/evaluate/{run}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("evaluate"),
        run_dir=lambda wildcards: str(plan.run_dir(wildcards.run)),
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "mtwork evaluate {params.args} --run-dir {params.run_dir:q} --data {input.data:q} --out {output:q}"
        " --protocol mtl > {log:q} 2>&1"


rule evaluate_dg:
    input:
        final=run_file("{run}", RUN_FINAL),
        data=lambda wildcards: dataset_input(wildcards.domain),
        check=str(plan.data_check_path("{domain}")),
        text=lv_text_input,
    output:
        str(plan.metrics_path("{run}", plan.PROTOCOL_DG, "{domain}")),
    log:
        "logs/evaluate_dg/{domain}/{run}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("evaluate_dg"),
        run_dir=lambda wildcards: str(plan.run_dir(wildcards.run)),
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "mtwork evaluate {params.args} --run-dir {params.run_dir:q} --data {input.data:q} --out {output:q}"
        " --protocol dg --domain {wildcards.domain} > {log:q} 2>&1"
