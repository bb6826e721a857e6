"""The training engine both lines of work use (source 1: ``mtwork.train``; source 2: ``mtwork.train_vit``).

One job per module:
    recipe.py       what a line of work provides (model, data, losses, final files) and FitSettings
    loop.py         the one fit loop: stages, accumulation, AMP, guards, progress, JSON log, checkpoints
    optim.py        AdamW parameter groups (no decay on norms, biases, scalars) and the per-stage schedule
    precision.py    train.amp: bf16 autocast, or fp16 with a gradient scaler
    distributed.py  DDP from torchrun / srun / --nproc environments; reductions by global counts
    launch.py       ``mtwork train --nproc N`` through torch's elastic launcher
    sampler.py      world-size invariant data order and per-sample augmentation seeds
    checkpoint.py   epoch checkpoints: full training state, RNG states, resume with fallback
docs/training.md describes the schedule, the parameter groups, world-size invariance and resume.

Nothing is imported here: task losses import ``mtwork.engine.distributed`` (a leaf over torch), and
importing the package must stay as cheap as that.
"""
