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
# PARAM_KEYS of rules/common.smk; dvc.yaml lists the same keys per stage), so Snakemake's params
# trigger reruns exactly the rules a changed parameter reaches. The overrides enter the commands
# through `params.args` (see CommandArgs), which does not trigger reruns of its own.
#
# All paths come from mtwork.plan (defined once there); dvc.yaml spells the same paths and commands
# and tests/integration/test_workflow_definition.py proves that both plan the same jobs.
#
# DVC and mtimes: `dvc checkout`/`dvc pull` does not preserve modification times. Small files
# (< 1 MB: data checks, logs, metrics) are guarded by Snakemake's input checksums; for the rest run
# `snakemake --touch results/tables` after a checkout so Snakemake sees them as up to date. Inputs
# the workflow does not make (the user's BDD100K folder and upstream checkpoint files, possibly
# DVC-imported) are marked ancient(): only their presence matters, never their time. Internal
# artefacts are *not* ancient on purpose: an ancient input stops a rerun upstream from reaching
# this rule (snakemake's dag skips dependants whose inputs are all ancient).

configfile: "params.yaml"


include: "rules/common.smk"


wildcard_constraints:
    domain=r"[A-Za-z0-9_\-]+",
    source=r"[A-Za-z0-9_\-]+",
    run=RUN_ID_PATTERN,


localrules:
    all,


rule all:
    input:
        TABLES_DIR,


include: "rules/data.smk"
include: "rules/checkpoints.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/vit.smk"
include: "rules/tables.smk"
