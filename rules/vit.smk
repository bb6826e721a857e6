# Source 2: ViT adapters on a frozen Swin-V2 (the `vit` block of params.yaml). The Swin's checkpoint
# comes through rules/checkpoints.smk like every source (SimMIM pretraining + import); its runs live in
# models/vit/<run>/ and results/metrics/vit/<run>.json, apart from source 1's.


rule train_vit:
    input:
        data=dataset_input(SOURCE_DOMAIN),
        check=str(plan.data_check_path(SOURCE_DOMAIN)),
        checkpoint=train_checkpoint,
    output:
        final=str(plan.vit_run_dir("{run}") / RUN_FINAL),
        log=str(plan.vit_run_dir("{run}") / RUN_LOG),
    log:
        "logs/train_vit/{run}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("train_vit"),
        out_dir=lambda wildcards: str(plan.vit_run_dir(wildcards.run)),
        nproc=nproc_args,
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
        nproc=1,
    conda:
        CONDA_ENV
    shell:
        "mtwork train {params.args} --run {wildcards.run} --data {input.data:q} --checkpoint {input.checkpoint:q}"
        " --out {params.out_dir:q}{params.nproc} > {log:q} 2>&1"


# One job evaluates all of source 2's runs (one process: the start-up is paid once, see evaluate.smk).
if VIT_RUNS:

    rule evaluate_vit:
        input:
            finals=[str(plan.vit_run_dir(run.id) / RUN_FINAL) for run in VIT_RUNS],
            checkpoint=str(plan.pretrained_path(P["vit"]["source"])),
            data=dataset_input(SOURCE_DOMAIN),
            check=str(plan.data_check_path(SOURCE_DOMAIN)),
        output:
            [str(plan.vit_metrics_path(run.id)) for run in VIT_RUNS],
        log:
            "logs/evaluate_vit.log",
        params:
            args=MTWORK_ARGS,
            settings=rule_params("evaluate_vit"),
            run_dirs=" ".join(f"--run-dir {shlex.quote(str(plan.vit_run_dir(run.id)))}" for run in VIT_RUNS),
            metrics_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),  # results/metrics
        threads: TRAIN_THREADS
        resources:
            gpu=GPUS,
        conda:
            CONDA_ENV
        shell:
            "mtwork evaluate {params.args} {params.run_dirs} --data {input.data:q} --metrics-dir {params.metrics_dir:q}"
            " --protocol mtl > {log:q} 2>&1"
