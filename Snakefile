# mtwork workflow: Snakemake is the execution engine (fine-grained DAG, parallel jobs, cluster
# submission, reruns on changed parameters). Every rule runs exactly one `mtwork <verb>` command.
#
#   snakemake --cores all                                   # = results/tables (embedded scale, CPU)
#   snakemake --profile profiles/local                      # the same, with the local profile
#   snakemake --profile profiles/slurm                      # on a Slurm cluster
#   snakemake --cores all --config scale=paper \
#       'data={bdd100k_root: /data/bdd100k}' \
#       checkpoints__catalog__moco_v2__path=/w/moco_v2.pth.tar \
#       checkpoints__catalog__supervised_imagenet__path=/w/resnet50-0676ba61.pth
#
# Parameters: `params.yaml` is the config file. Every value that `--config`/`--configfile` changes
# relative to params.yaml becomes an override KEY=VALUE (dotted key) that
#   (a) is applied with mtwork.config.resolve to get the resolved params P the DAG is planned from, and
#   (b) is passed to every mtwork command as `--set KEY=VALUE`, so the commands see the same params.
# Nested keys: snakemake 9 rejects dots in `--config` keys, so write them as `a__b__c=VALUE`
# (`__` stands for `.`), as a nested YAML value `'a={b: {c: VALUE}}'`, or in a `--configfile`;
# dotted keys given through the Python API (ConfigSettings(config={"a.b.c": ...})) work as they are.
# Values are parsed as YAML (like `mtwork --set` and `dvc exp run -S`).
#
# Reruns: each rule's `params.settings` holds the resolved parameters its command reads (key lists in
# mtwork/workflow.py; the generated dvc.yaml tracks their union per stage), so Snakemake's params
# trigger reruns exactly the rules a changed parameter reaches. The overrides enter the commands
# through `params.args` (see CommandArgs), which does not trigger reruns of its own.
#
# All paths come from mtwork.plan (defined once there). dvc.yaml is generated from the same rules
# (mtwork/workflow.py, `mtwork plan --dvc`): one DVC stage per phase, each running this workflow up to
# its rules. After a run that built results/tables, `onsuccess` commits the outputs to DVC
# (`mtwork record`), so `dvc status` is clean and `dvc push` shares them.
#
# DVC checkouts: `dvc pull`/`dvc checkout` does not preserve modification times. In a fresh clone
# (no .snakemake/ records yet) whose outputs DVC restored exactly as dvc.lock recorded them, the
# Snakefile dates them in plan order (restore_checkout_times), so `snakemake -n` finds nothing to do.
# In a workspace that has run Snakemake before, run `snakemake --touch results/tables` after a
# `dvc checkout`. Inputs the workflow does not make (the user's BDD100K folder and upstream checkpoint
# files) are marked ancient(): only their presence matters.

configfile: "params.yaml"


# Jobs run their `mtwork` command in a child of a warm process that has imported torch, torchvision and
# timm once (mtwork/warmstart.py), instead of paying those imports per job. MTWORK_WARM_START=0 in the
# environment switches it off; inside Slurm jobs it is always off. (Braces doubled: Snakemake formats it.)
shell.prefix("set -euo pipefail; export MTWORK_WARM_START=${{MTWORK_WARM_START-1}}; ")


include: "rules/common.smk"


wildcard_constraints:
    domain=r"[A-Za-z0-9_\-]+",
    source=r"[A-Za-z0-9_\-]+",
    run=RUN_ID_PATTERN,


localrules:
    all,
    phase_data,
    phase_checkpoints,
    phase_train,
    phase_evaluate,


rule all:
    input:
        TABLES_DIR,


onsuccess:
    record_for_dvc()


include: "rules/data.smk"
include: "rules/checkpoints.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/vit.smk"
include: "rules/tables.smk"
include: "rules/phases.smk"


# a fresh clone whose outputs `dvc pull` restored: date them in plan order (see rules/common.smk)
restore_checkout_times()
