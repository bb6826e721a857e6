# Evaluation: one job per checkpoint source evaluates every run of that source on the source domain's
# val split (protocol mtl) and, with each model loaded once, on each domain of data.dg_domains without
# any training there (protocol dg). One process for all of a source's runs pays the start-up of
# `mtwork` (importing torch, timm, torchvision: ~8 s on a 2 GHz CPU core) once instead of once per run.
# The runs of every source have the same (paradigm, tasks, seed) shapes (plan.plan_runs), so the
# outputs are patterns in {source} alone. dvc.yaml keeps one stage per run (DVC cannot list a
# variable number of outputs per stage); the definition test checks both evaluate the same runs
# into the same files.


# a source-2-only configuration (checkpoints.sources: []) plans no source-1 run
if RUNS:

    rule evaluate:
        input:
            finals=lambda wildcards: [run_file(run.id, RUN_FINAL) for run in plan.source_runs(P, wildcards.source)],
            data=domain_input(SOURCE_DOMAIN),
            check=domain_check(SOURCE_DOMAIN),
            dg_data=[domain_input(domain) for domain in DG_DOMAINS],
            dg_checks=list(dict.fromkeys(domain_check(domain) for domain in DG_DOMAINS)),
            text=lv_text_input,
        output:
            mtl=[str(plan.metrics_path(f"{{source}}{shape}", plan.PROTOCOL_MTL)) for shape in RUN_SHAPES],
            dg=[str(plan.metrics_path(f"{{source}}{shape}", plan.PROTOCOL_DG, d)) for d in DG_DOMAINS for shape in RUN_SHAPES],
        log:
            "logs/evaluate/{source}.log",
        params:
            args=MTWORK_ARGS,
            settings=rule_params("evaluate"),
            domain=SOURCE_DOMAIN,
            run_dirs=lambda wildcards: " ".join(
                f"--run-dir {shlex.quote(str(plan.run_dir(run.id)))}" for run in plan.source_runs(P, wildcards.source)
            ),
            dg=dg_args,
            metrics_dir=lambda wildcards, output: str(Path(output.mtl[0]).parent),  # results/metrics
        threads: TRAIN_THREADS
        resources:
            gpu=GPUS,
        conda:
            CONDA_ENV
        shell:
            "mtwork evaluate {params.args} {params.run_dirs} --data {input.data:q} --domain {params.domain:q} --metrics-dir {params.metrics_dir:q}"
            " --protocol mtl {params.dg} > {log:q} 2>&1"
