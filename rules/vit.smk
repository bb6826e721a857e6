# Source 2: ViT adapters on a frozen Swin-V2 (the `vit` block of params.yaml). The Swin's checkpoint
# comes through rules/checkpoints.smk like every source (SimMIM pretraining + import); its runs train
# through rule `train` (rules/train.smk) into models/runs/<run>/, and are evaluated here into
# results/metrics/vit/<run>.json.


# One job evaluates all of source 2's runs (one process: the start-up is paid once, see evaluate.smk).
if VIT_RUNS:

    rule evaluate_vit:
        input:
            finals=[str(plan.run_dir(run.id) / RUN_FINAL) for run in VIT_RUNS],
            checkpoint=str(plan.pretrained_path(P["vit"]["source"])),
            data=domain_input(SOURCE_DOMAIN),
            check=domain_check(SOURCE_DOMAIN),
        output:
            [str(plan.vit_metrics_path(run.id)) for run in VIT_RUNS],
        log:
            "logs/evaluate_vit.log",
        params:
            args=MTWORK_ARGS,
            settings=rule_params("evaluate_vit"),
            domain=SOURCE_DOMAIN,
            run_dirs=" ".join(f"--run-dir {shlex.quote(str(plan.run_dir(run.id)))}" for run in VIT_RUNS),
            metrics_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),  # results/metrics
        threads: TRAIN_THREADS
        resources:
            gpu=GPUS,
        conda:
            CONDA_ENV
        shell:
            "mtwork evaluate {params.args} {params.run_dirs} --data {input.data:q} --domain {params.domain:q} --metrics-dir {params.metrics_dir:q}"
            " --protocol mtl > {log:q} 2>&1"
