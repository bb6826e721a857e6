# Training: one job per run id (SOURCE__PARADIGM__TASK-TASK[__PROTOCOL-TARGET]__sSEED, parsed with
# plan.parse_run_id), for both lines of work: `mtwork train` takes a run of a Swin-V2 source (source 2)
# to its ViT-adapter training and every other run to source 1's. Source 2's transfer runs (mtwork/protocols)
# train on their target (zero-shot, oracle) or on the source with the target's unlabelled images (UDA),
# and zero-shot and UDA runs start from their multi-task run's final.pt (--init). It also writes epoch checkpoints (and adapt.pt) into the
# run directory; final.pt and log.json are the declared outputs.
# A rerun of a failed or timed-out job (profile `retries:`) resumes after the last epoch checkpoint.
# Resource `nproc` (default 1; a profile's set-resources raises it, e.g. with gpu=4 nproc=4) runs the job
# as that many data-parallel processes.


rule train:
    input:
        data=train_data,
        check=train_checks,
        target=train_target_data,
        init=train_init,
        checkpoint=train_checkpoint,
        text=train_text_input,
    output:
        final=run_file("{run}", RUN_FINAL),
        log=run_file("{run}", RUN_LOG),
    log:
        "logs/train/{run}.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("train"),
        domain=train_domain,
        transfer=transfer_args,
        out_dir=lambda wildcards: str(plan.run_dir(wildcards.run)),
        nproc=nproc_args,
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
        nproc=1,
    conda:
        CONDA_ENV
    shell:
        "mtwork train {params.args} --run {wildcards.run} --data {input.data:q} --domain {params.domain:q} --checkpoint {input.checkpoint:q}"
        " --out {params.out_dir:q}{params.nproc} {params.transfer} > {log:q} 2>&1"
