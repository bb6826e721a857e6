# Data: make the datasets the planned domains read (generate SynthDrive; download public datasets whose
# root is null), and check every dataset's folder before any job reads it.


rule generate_synthdrive:
    output:
        directory(str(plan.GENERATED_ROOT)),
    log:
        "logs/generate_synthdrive.log",
    params:
        args=MTWORK_ARGS,
        settings=rule_params("generate_synthdrive"),
    conda:
        CONDA_ENV
    shell:
        "mtwork generate {params.args} --out {output:q} > {log:q} 2>&1"


# A dataset of data.datasets with root null (and not generated): fetched with checksums and resumable
# transfers into data/datasets/<name>; login-gated ones (Cityscapes, BDD100K) read credentials from the
# environment or stop with what to fetch, from where and where to put it (docs/datasets.md).
rule download:
    output:
        directory(str(plan.DOWNLOAD_DIR / "{dataset}")),
    log:
        "logs/download/{dataset}.log",
    params:
        catalog=lambda wildcards: P["data"]["datasets"][wildcards.dataset]["format"],
    conda:
        CONDA_ENV
    shell:
        "mtwork download --dataset {params.catalog} --dest {output:q} > {log:q} 2>&1"


rule check_data:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        str(plan.data_check_path("{dataset}")),
    log:
        "logs/check_data/{dataset}.log",
    params:
        format=lambda wildcards: P["data"]["datasets"][wildcards.dataset]["format"],
    conda:
        CONDA_ENV
    shell:
        "mtwork data check --format {params.format} {input.data:q} --json {output:q} > {log:q} 2>&1"
