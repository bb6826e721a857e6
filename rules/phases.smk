# Phase targets: one rule per phase of the workflow, whose inputs are every output its jobs make in the
# plan. `snakemake phase_train` builds the whole training phase (and what it needs). Each stage of the
# generated dvc.yaml runs one of them (mtwork/workflow.py DVC_STAGES); the last phase's target is
# results/tables itself. They run no command.


rule phase_data:
    input:
        planned_outputs("download", "generate_synthdrive", "check_data"),


rule phase_checkpoints:
    input:
        planned_outputs("pretrain", "import_checkpoint"),


rule phase_train:
    input:
        planned_outputs("train"),


rule phase_evaluate:
    input:
        planned_outputs("evaluate", "evaluate_vit"),
