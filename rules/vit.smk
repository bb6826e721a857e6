# Source 2: ViT adapters on a frozen Swin-V2 (the `vit` block of params.yaml). The Swin's checkpoint
# comes through rules/checkpoints.smk like every source (SimMIM pretraining + import); its runs train
# through rule `train` (rules/train.smk) into models/runs/<run>/, and are evaluated here into
# results/metrics/vit/<run>.json.


# One job evaluates all of source 2's runs (one process: the start-up is paid once, see evaluate.smk),
# each where mtwork.plan.vit_evaluations says: a multi-task run on the source domain, every DG domain
# (vit.dg_domains) and the targets of the transfer runs that start from it; a transfer run on its target.
if VIT_RUNS:

    rule evaluate_vit:
        input:
            finals=[str(plan.run_dir(run.id) / RUN_FINAL) for run in VIT_RUNS],
            checkpoint=str(plan.pretrained_path(P["vit"]["source"])),
            data=domain_input(VIT_SOURCE_DOMAIN),
            check=domain_check(VIT_SOURCE_DOMAIN),
            other_data=[domain_input(domain) for domain in VIT_OTHER_DOMAINS],
            other_checks=list(dict.fromkeys(domain_check(domain) for domain in VIT_OTHER_DOMAINS)),
        output:
            VIT_METRICS,
        log:
            "logs/evaluate_vit.log",
        params:
            args=MTWORK_ARGS,
            settings=rule_params("evaluate_vit"),
            domain=VIT_SOURCE_DOMAIN,
            run_dirs=" ".join(f"--run-dir {shlex.quote(str(plan.run_dir(run.id)))}" for run in VIT_RUNS),
            others=lambda wildcards, input: " ".join(
                f"--dg-domain {shlex.quote(domain)} --dg-data {shlex.quote(str(root))}"
                for domain, root in zip(VIT_OTHER_DOMAINS, input.other_data)
            ),
            # results/metrics: the first output is the first run's (a single-task run) vit/<run>.json
            metrics_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),
        threads: TRAIN_THREADS
        resources:
            gpu=GPUS,
        conda:
            CONDA_ENV
        shell:
            "mtwork evaluate {params.args} {params.run_dirs} --data {input.data:q} --domain {params.domain:q} --metrics-dir {params.metrics_dir:q}"
            " {params.others} > {log:q} 2>&1"
