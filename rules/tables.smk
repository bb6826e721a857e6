# Tables and figures from all metrics (and the runs' log.json for the training curves).


rule tables:
    input:
        mtl=[str(plan.metrics_path(run.id, plan.PROTOCOL_MTL)) for run in RUNS],
        dg=[str(plan.metrics_path(run.id, plan.PROTOCOL_DG, domain)) for domain in DG_DOMAINS for run in RUNS],
        logs=[run_file(run.id, RUN_LOG) for run in RUNS],
        vit=VIT_METRICS,
        vit_logs=[str(plan.run_dir(run.id) / RUN_LOG) for run in VIT_RUNS],
    output:
        tables=directory(TABLES_DIR),
        figures=directory(FIGURES_DIR),
    log:
        "logs/tables.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("tables"),
        metrics_dir=parent_dir("mtl", 1, ("vit", 2)),  # results/metrics (vit: the first is vit/<run>.json)
        runs_dir=parent_dir("logs", 2, ("vit_logs", 2)),  # models/runs
    conda:
        CONDA_ENV
    shell:
        "mtwork tables {params.args} --metrics {params.metrics_dir:q} --runs {params.runs_dir:q}"
        " --out {output.tables:q} --figures {output.figures:q} > {log:q} 2>&1"
