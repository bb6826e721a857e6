"""The ``mtwork`` console script: one subcommand per arrow of the data flow.

    mtwork generate           SynthDrive -> data/synthdrive/<domain>/ (BDD100K layout)
    mtwork data check         validate a BDD100K-layout dataset (exit 1 on problems)
    mtwork pretrain           embedded SSL pretraining (MoCo v2, SimCLR, BYOL, DINO, DenseCL, tiny CLIP) -> upstream layout
    mtwork import-checkpoint  upstream checkpoint -> models/pretrained/<source>.pt (+ provenance)
    mtwork train              one run: adapt/finetune stages -> models/runs/<run>/final.pt
    mtwork evaluate           a trained run on a domain's val split -> results/metrics/...json
    mtwork tables             metrics -> results/tables/*.md|.tex|.csv and results/figures/*.png
    mtwork plan               the planned runs; --dvc writes the DVC pipeline generated from the rules
    mtwork record             commit a finished run's outputs to DVC (the Snakefile does it on success)
    mtwork score              score Scalabel detections / mask PNGs against BDD100K labels (official protocol)
    mtwork probe              linear-probe segmentation on a frozen Swin-V2's features (pretrained vs random)

Snakemake rules and DVC stages call these and nothing else. Imports are lazy so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Sequence


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set train.epochs=3 (repeatable; value parsed as YAML)",
    )


def _params(args: argparse.Namespace):
    from mtwork.config import load_params

    return load_params(args.params, args.overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    from mtwork.data.synthdrive import generate_synthdrive

    syn = _params(args)["data"]["synthdrive"]
    generate_synthdrive(
        args.out,
        **({"domain": args.domain[0]} if len(args.domain) == 1 else {"domains": args.domain}),
        seed=syn["seed"] if args.seed is None else args.seed,
        image_size=tuple(syn["image_size"]),
        counts=syn["counts"],
        overlap=syn["overlap"],
        progress=True,
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from mtwork.data.check import run_check_cli

    if args.format != "bdd100k":
        raise SystemExit(f"mtwork data check: unknown format '{args.format}' (known: bdd100k)")
    return run_check_cli(args.root, json_out=args.json)


def cmd_pretrain(args: argparse.Namespace) -> int:
    import inspect

    from mtwork.plan import source_arch
    from mtwork.pretrain import PRETRAINERS

    params = _params(args)
    catalog = params["checkpoints"]["catalog"]
    if args.source not in catalog:
        raise KeyError(f"checkpoint source '{args.source}' is not in checkpoints.catalog of {args.params}")
    entry = catalog[args.source]
    shared = params["checkpoints"]["pretrain"]
    if entry["format"] == "open_clip" and "pretrain" in entry:
        # the tiny CLIP learns from images *and* captions made from their labels: it reads the dataset
        from mtwork.pretrain.clip import train_tiny_clip

        settings = {"epochs": shared["epochs"], "batch_size": shared["batch_size"], **entry["pretrain"]}
        train_tiny_clip(args.data, args.out, seed=args.seed, num_threads=args.threads, progress=True, **settings)
        return 0
    if entry["format"] not in PRETRAINERS or "pretrain" not in entry:
        raise ValueError(
            f"checkpoint source '{args.source}' (format '{entry['format']}') has no embedded pretraining "
            f"(formats with one: {', '.join(PRETRAINERS.names())}; the entry needs a `pretrain` block)"
        )
    pretrain = PRETRAINERS.get(entry["format"])
    accepted = inspect.signature(pretrain).parameters
    for key in entry["pretrain"]:
        if key not in accepted or key in ("image_dirs", "out", "arch", "seed", "num_threads", "progress"):
            raise KeyError(f"'checkpoints.catalog.{args.source}.pretrain.{key}' is not a setting of the {entry['format']} pretraining")
    image_dirs = [args.data / "images" / "100k" / "train", args.data / "images" / "10k" / "train"]
    # the entry's own settings win over the shared ones (e.g. a longer schedule for one method)
    settings = {"epochs": shared["epochs"], "batch_size": shared["batch_size"], "crop": shared["crop"], **entry["pretrain"]}
    pretrain(
        [d for d in image_dirs if d.is_dir()],
        args.out,
        arch=source_arch(params, args.source),
        seed=args.seed,
        num_threads=args.threads,
        progress=True,
        **settings,
    )
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from mtwork.checkpoints.importer import import_checkpoint

    if args.source:
        # Pipeline form: format, file and architecture come from params.yaml's checkpoint catalog.
        from mtwork.plan import source_arch, upstream_checkpoint_path

        params = _params(args)
        if args.source not in params["checkpoints"]["catalog"]:
            raise KeyError(f"checkpoint source '{args.source}' is not in checkpoints.catalog of {args.params}")
        fmt = params["checkpoints"]["catalog"][args.source]["format"]
        src, arch, out = upstream_checkpoint_path(params, args.source), source_arch(params, args.source), Path(args.src)
    else:
        if args.format is None or args.out is None:
            raise SystemExit("mtwork import-checkpoint: give --format FORMAT SRC OUT, or --source NAME OUT")
        fmt, arch, out = args.format, args.arch, args.out
        src = None if args.src in ("-", "none") else Path(args.src)
    report = import_checkpoint(fmt, src, out, arch=arch, seed=args.seed)
    print(report.to_text())
    return 0


def cmd_download_checkpoint(args: argparse.Namespace) -> int:
    from mtwork.checkpoints.download import fetch_source

    print(fetch_source(args.name, args.dest, timeout=args.timeout, progress=True))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtwork.plan import is_vit_run, parse_run_id

    params = _params(args)
    if is_vit_run(params, parse_run_id(args.run)):  # source 2: a Swin-V2 source
        from mtwork.train_vit import train_vit_run

        train_vit_run(params, args.run, data_root=args.data, checkpoint=args.checkpoint, out_dir=args.out)
        return 0
    from mtwork.train import train_run

    train_run(params, args.run, data_root=args.data, checkpoint=args.checkpoint, out_dir=args.out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one or more runs, writing each run's metrics where mtwork.plan puts them under
    --metrics-dir. Several runs in one process pay the start-up (importing torch, timm, torchvision:
    seconds on a small CPU) once: the workflow evaluates a whole checkpoint source per job."""
    from mtwork.plan import is_vit_run, metrics_path, parse_run_id, vit_metrics_path

    params = _params(args)
    if len(args.dg_domain) != len(args.dg_data):
        raise ValueError("give --dg-domain and --dg-data once per domain-generalization domain "
                         f"(got {len(args.dg_domain)} and {len(args.dg_data)})")
    for i, run_dir in enumerate(args.run_dir, 1):
        run_id = Path(run_dir).name
        print(f"[mtwork evaluate] run {i}/{len(args.run_dir)}: {run_id}", flush=True)
        if is_vit_run(params, parse_run_id(run_id)):
            from mtwork.train_vit import evaluate_vit_run

            if args.protocol != "mtl":
                raise ValueError(f"source 2's runs are evaluated with protocol mtl only, not '{args.protocol}'")
            evaluate_vit_run(params, run_dir, data_root=args.data, out=vit_metrics_path(run_id, args.metrics_dir))
            continue
        from mtwork.evaluate import evaluate_run

        dg = [(d, root, metrics_path(run_id, "dg", d, args.metrics_dir)) for d, root in zip(args.dg_domain, args.dg_data)]
        out = metrics_path(run_id, args.protocol, args.domain, args.metrics_dir)
        evaluate_run(params, run_dir, data_root=args.data, out=out, protocol=args.protocol, domain=args.domain, dg=dg)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from mtwork.report.tables import write_tables

    params = _params(args)
    write_tables(params, metrics_dir=args.metrics, runs_dir=args.runs, out_dir=args.out, figures_dir=args.figures)
    if params["vit"]["enabled"]:  # source 2's tables from results/metrics/vit and its runs' logs
        from mtwork.report.vit_tables import write_vit_tables

        write_vit_tables(params, Path(args.metrics) / "vit", args.runs, args.out, args.figures)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the runs the settings plan; with --dvc, write (or --check) the generated dvc.yaml."""
    from mtwork import workflow

    if args.dvc is not None:
        if args.check:
            diff = workflow.check_dvc_yaml(args.dvc)
            if diff:
                print(diff, end="")
                print(f"mtwork plan: {args.dvc} is not the generated pipeline; run `mtwork plan --dvc {args.dvc}`",
                      file=sys.stderr)
                return 1
            print(f"{args.dvc} is up to date")
            return 0
        print(f"wrote {workflow.write_dvc_yaml(args.dvc)}")
        return 0
    import json

    print(json.dumps(workflow.plan_summary(_params(args)), indent=2))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Commit the pipeline's outputs to DVC (what the Snakefile does after a complete run)."""
    from mtwork.workflow import RecordSkipped, record_outputs

    try:
        stages = record_outputs(args.root)
    except RecordSkipped as why:
        print(f"mtwork record: not recorded for DVC: {why}")
        return 0 if args.if_possible else 1
    print(f"mtwork record: outputs of stages {', '.join(stages)} committed to DVC (dvc status is clean)")
    return 0


def _attribute_option(text: str) -> tuple:
    """'timeofday=night' or 'weather=rainy,snowy' -> (key, value or [values])."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,VALUE...], got {text!r}")
    values = [v.strip() for v in value.split(",")]
    return key.strip(), values[0] if len(values) == 1 else values


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from mtwork.io import write_json
    from mtwork.score import json_ready, score_det, score_masks

    if args.score_task == "det":
        result = score_det(args.gt, args.pred, attributes=dict(args.attr) if args.attr else None)
    else:
        result = score_masks(args.score_task, args.gt, args.pred)
    result = json_ready(result)
    if args.out is not None:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from mtwork.io import write_json
    from mtwork.plan import source_arch
    from mtwork.probe import ProbeSettings, probe_swin

    if not args.checkpoint and not args.random:
        raise ValueError("nothing to probe: give --checkpoint FILE (repeatable) and/or --random")
    params = _params(args)
    arch = args.arch or source_arch(params, params["vit"]["source"])
    size = tuple(params["vit"]["input_size"])
    settings = ProbeSettings(**({"steps": args.steps} if args.steps is not None else {}))
    encoders = [(str(c), c) for c in args.checkpoint] + ([(f"random (seed {args.seed})", None)] if args.random else [])
    records = []
    for label, checkpoint in encoders:
        record = probe_swin(args.data, arch, size, checkpoint, seed=args.seed, settings=settings)
        records.append(record)
        print(f"[mtwork probe] {label}: " + ", ".join(
            f"{name} mIoU {m['miou']:.1f} / acc {m['pixel_acc']:.1f}" for name, m in record["results"].items()),
            flush=True)
    if args.out is not None:
        write_json(args.out, {"encoders": records})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtwork", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a SynthDrive domain in the BDD100K layout")
    _add_params(p)
    p.add_argument("--domain", required=True, action="append",
                   help="SynthDrive domain, e.g. clear_day, dusk_fog; repeat to write several domains into one root")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=None, help="default: data.synthdrive.seed")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="validate a dataset; exit 1 when problems are found")
    c.add_argument("--format", default="bdd100k")
    c.add_argument("root", type=Path)
    c.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    c.set_defaults(func=cmd_data_check)

    p = sub.add_parser(
        "pretrain",
        help="embedded self-supervised pretraining on unlabeled images, written in the source's upstream layout",
    )
    _add_params(p)
    p.add_argument("--source", required=True, help="a checkpoints.catalog entry with a `pretrain` block")
    p.add_argument("--data", required=True, type=Path, help="BDD100K-layout root whose train images are used")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "import-checkpoint",
        help="convert an upstream checkpoint to backbone weights + provenance",
        description="Either `--format FORMAT [--arch A] SRC OUT`, or `--source NAME OUT` to take the format, "
        "file and architecture from params.yaml's checkpoints.catalog.",
    )
    _add_params(p)
    p.add_argument("--format", default=None, help="upstream format (moco, torchvision, timm, random, ...)")
    p.add_argument("--source", default=None, help="a checkpoints.catalog entry of the params file")
    p.add_argument("--arch", default="resnet18", help="backbone architecture (timm name)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for --format random")
    p.add_argument("src", help="upstream file ('-' for --format random); with --source: OUT")
    p.add_argument("out", type=Path, nargs="?", default=None)
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser(
        "download-checkpoint",
        help="fetch a published upstream checkpoint (mtwork/checkpoints/catalog.py) and verify its checksum",
    )
    p.add_argument("name", help="a source of the catalog, e.g. moco_v2, supervised_imagenet, clip_rn50")
    p.add_argument("--dest", type=Path, default=Path("models/pretrained/upstream"))
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_download_checkpoint)

    p = sub.add_parser(
        "probe",
        help="linear-probe segmentation on frozen Swin-V2 features: does a pretrained encoder carry information?",
        description="Trains a 1x1 conv on each frozen stage map (and on all of them) of the encoder for semantic "
        "segmentation on the data root's train split and scores it on val (mtwork/probe.py). Input size: "
        "vit.input_size; arch: vit.source's, unless --arch.",
    )
    _add_params(p)
    p.add_argument("--data", required=True, type=Path, help="BDD100K-layout root with sem_seg labels")
    p.add_argument("--checkpoint", action="append", default=[], type=Path,
                   help="a converted Swin-V2 file (mtwork import-checkpoint); repeatable")
    p.add_argument("--random", action="store_true", help="also probe a randomly initialised Swin-V2 (the control)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of --random")
    p.add_argument("--arch", default=None, help="swin:<name> (default: the arch of vit.source)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps of each probe")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("train", help="train one run (adapt and/or finetune stages)")
    _add_params(p)
    p.add_argument("--run", required=True, help="run id SOURCE__PARADIGM__TASKS__sSEED")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--checkpoint", required=True, type=Path, help="converted backbone file")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate trained runs on a domain's val split")
    _add_params(p)
    p.add_argument("--run-dir", required=True, type=Path, action="append", help="a run's folder; repeat for several runs")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path,
                   help="each run's metrics go to <run>.json, <protocol>/<domain>/<run>.json (e.g. dg/dusk_fog/) "
                        "or vit/<run>.json under this folder (default: results/metrics)")
    p.add_argument("--protocol", default="mtl", choices=["mtl", "dg"])
    p.add_argument("--domain", default=None)
    p.add_argument("--dg-domain", action="append", default=[], help="also evaluate on this domain (protocol dg); repeat")
    p.add_argument("--dg-data", action="append", default=[], type=Path, help="that domain's data root, in --dg-domain order")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tables", help="render paper-style tables and figures")
    _add_params(p)
    p.add_argument("--metrics", default=Path("results/metrics"), type=Path)
    p.add_argument("--runs", default=Path("models/runs"), type=Path, help="the runs' folders (their log.json)")
    p.add_argument("--out", default=Path("results/tables"), type=Path)
    p.add_argument("--figures", default=Path("results/figures"), type=Path)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("plan", help="print the planned runs, or write the generated dvc.yaml (--dvc)")
    _add_params(p)
    p.add_argument("--dvc", nargs="?", const=Path("dvc.yaml"), default=None, type=Path, metavar="FILE",
                   help="write the DVC pipeline generated from the workflow's rules (default file: dvc.yaml)")
    p.add_argument("--check", action="store_true", help="with --dvc: exit 1 with a diff if FILE is not up to date")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("record", help="commit the pipeline's outputs to DVC's cache and dvc.lock after a run")
    p.add_argument("--root", type=Path, default=Path("."), help="the DVC repository (default: .)")
    p.add_argument("--if-possible", action="store_true",
                   help="exit 0 when there is nothing to record (no DVC repository, incomplete run)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("score", help="score predictions against BDD100K labels as the official toolkit does",
                       description="Prints a JSON object (percent; null where the toolkit prints '-'). "
                       "det: Scalabel label and prediction files; drivable / sem_seg: folders of mask PNGs "
                       "(drivable on-disk ids 0 direct, 1 alternative, 2 background; sem_seg train ids, 255 ignore).")
    score_sub = p.add_subparsers(dest="score_task", required=True)
    for task in ("det", "drivable", "sem_seg"):
        s = score_sub.add_parser(task, help=f"score {task} predictions")
        what = "Scalabel JSON file" if task == "det" else "folder of <stem>.png masks"
        s.add_argument("--gt", required=True, type=Path, help=f"ground truth: {what}")
        s.add_argument("--pred", required=True, type=Path, help=f"predictions: {what}")
        s.add_argument("--out", type=Path, default=None, help="also write the JSON here")
        if task == "det":
            s.add_argument("--attr", action="append", type=_attribute_option, default=[], metavar="KEY=VALUE[,VALUE]",
                           help="score only ground-truth frames with these attributes, e.g. timeofday=night (repeatable)")
        s.set_defaults(func=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if not sys.stderr.isatty():
        # In job logs (Snakemake, Slurm) a progress bar redrawn many times a second buries the log:
        # redraw every 20 s instead. tqdm reads TQDM_* variables when it is first imported.
        os.environ.setdefault("TQDM_MININTERVAL", "20")
    parser = build_parser()
    args = parser.parse_args(argv)
    from mtwork.config import ParamsError

    try:
        return int(args.func(args) or 0)
    except (ParamsError, FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as exc:
        # Expected user errors: one clear line, no traceback.
        print(f"mtwork {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
