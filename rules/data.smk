# Data: generate the embedded SynthDrive domains (BDD100K layout) and validate any dataset root.

if SYNTHDRIVE:

    rule generate_synthdrive:
        output:
            directory(str(plan.synthdrive_root("{domain}"))),
        log:
            "logs/generate_synthdrive/{domain}.log",
        params:
            args=MTWORK_ARGS,
            settings=rule_params("generate_synthdrive"),
        conda:
            CONDA_ENV
        shell:
            "mtwork generate {params.args} --domain {wildcards.domain} --out {output:q} > {log:q} 2>&1"


rule check_data:
    input:
        data=lambda wildcards: dataset_input(wildcards.domain),
    output:
        str(plan.data_check_path("{domain}")),
    log:
        "logs/check_data/{domain}.log",
    conda:
        CONDA_ENV
    shell:
        "mtwork data check --format bdd100k {input.data:q} --json {output:q} > {log:q} 2>&1"
