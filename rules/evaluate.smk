# Evaluation: one job per run evaluates it on the source domain's val split (protocol mtl) and, with the
# model loaded once, on each domain of data.dg_domains without any training there (protocol dg).


rule evaluate:
    input:
        final=run_file("{run}", RUN_FINAL),
        data=dataset_input(SOURCE_DOMAIN),
        check=str(plan.data_check_path(SOURCE_DOMAIN)),
        dg_data=[dataset_input(domain) for domain in DG_DOMAINS],
        dg_checks=[str(plan.data_check_path(domain)) for domain in DG_DOMAINS],
        text=lv_text_input,
    output:
        mtl=str(plan.metrics_path("{run}", plan.PROTOCOL_MTL)),
        dg=[str(plan.metrics_path("{run}", plan.PROTOCOL_DG, domain)) for domain in DG_DOMAINS],
    log:
        "logs/evaluate/{run}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("evaluate"),
        run_dir=lambda wildcards: str(plan.run_dir(wildcards.run)),
        dg=dg_args,
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
    conda:
        CONDA_ENV
    shell:
        "mtwork evaluate {params.args} --run-dir {params.run_dir:q} --data {input.data:q} --out {output.mtl:q}"
        " --protocol mtl {params.dg} > {log:q} 2>&1"
