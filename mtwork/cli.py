"""The ``mtwork`` console script: one subcommand per arrow of the data flow.

    mtwork params             print the resolved settings (params file -> paper block -> --set) as YAML
    mtwork generate           SynthDrive -> data/synthdrive/<domain>/ (BDD100K layout)
    mtwork data check         validate a dataset in its on-disk format (exit 1 on problems)
    mtwork download           fetch and extract a public dataset -> data/<dataset>/ (or say what to fetch)
    mtwork pretrain           embedded SSL pretraining (MoCo v2, SimCLR, BYOL, DINO, DenseCL, tiny CLIP) -> upstream layout
    mtwork import-checkpoint  upstream checkpoint -> models/pretrained/<source>.pt (+ provenance)
    mtwork train              one run: adapt/finetune stages -> models/runs/<run>/final.pt
    mtwork evaluate           a trained run on a domain's val split -> results/metrics/...json
    mtwork tables             metrics -> results/tables/*.md|.tex|.csv and results/figures/*.png
    mtwork plan               the planned runs; --dvc writes the DVC pipeline generated from the rules
    mtwork record             commit a finished run's outputs to DVC (the Snakefile does it on success)
    mtwork score              score Scalabel detections / mask PNGs against BDD100K labels (official protocol)
    mtwork bench              training-step, loader and MFU numbers of this machine (docs/benchmarks.md)
    mtwork probe              linear-probe segmentation on a frozen Swin-V2's features (pretrained vs random)

Snakemake rules and DVC stages call these and nothing else. Imports are lazy so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import List, Sequence

from mtwork.errors import UserError


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set train.epochs=3 or --set train.lr=1e-4 (repeatable; the value "
        "is YAML; overrides win over the paper block)",
    )


def _params(args: argparse.Namespace):
    from mtwork.config import load_params

    return load_params(args.params, args.overrides)


def cmd_params(args: argparse.Namespace) -> int:
    """Print the settings every command would run with. The output is itself a complete params file
    (scale included, the paper block already applied): ``--params`` on it gives the same settings."""
    from mtwork.config import ParamsError, merge_layers, read_params_file, validate, yaml_dump

    params = merge_layers(read_params_file(args.params), args.overrides)
    sys.stdout.write(yaml_dump(params))
    try:
        validate(params)
    except ParamsError as exc:  # printed anyway: seeing the merged values is how one finds the culprit
        print(f"mtwork params: these settings would be refused: {args.params}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from mtwork.data.synthdrive import generate_synthdrive

    syn = _params(args)["data"]["synthdrive"]
    domains = args.domain or syn["domains"]
    generate_synthdrive(
        args.out,
        **({"domain": domains[0]} if len(domains) == 1 else {"domains": domains}),
        seed=syn["seed"] if args.seed is None else args.seed,
        image_size=tuple(syn["image_size"]),
        counts=syn["counts"],
        overlap=syn["overlap"],
        min_box_pixels=syn["min_box_pixels"],
        progress=True,
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from mtwork.data.check import run_check_cli

    return run_check_cli(args.root, json_out=args.json, fmt=args.format)


def _domain_train_images(params, args: argparse.Namespace):
    """The train images of the pretraining domain (--domain, default data.source_domain) under --data:
    self-supervised pretraining sees only the source domain, never a DG or target domain."""
    from mtwork.data.bdd100k import domain_images
    from mtwork.plan import domain

    name = args.domain or params["data"]["source_domain"]
    if name not in params["data"]["domains"]:
        raise UserError(f"domain '{name}' is not in data.domains (known: {', '.join(params['data']['domains'])})")
    spec = domain(params, name)
    if spec.format != "bdd100k":
        raise UserError(f"embedded pretraining reads BDD100K-format images; domain '{name}' is {spec.format}")
    return domain_images(args.data, "train", spec.attributes)


def cmd_pretrain(args: argparse.Namespace) -> int:
    import inspect

    from mtwork.plan import source_arch
    from mtwork.pretrain import PRETRAINERS

    params = _params(args)
    catalog = params["checkpoints"]["catalog"]
    if args.source not in catalog:
        raise UserError(f"checkpoint source '{args.source}' is not in checkpoints.catalog of {args.params}")
    entry = catalog[args.source]
    shared = params["checkpoints"]["pretrain"]
    if entry["format"] == "open_clip" and "pretrain" in entry:
        # the tiny CLIP learns from images *and* captions made from their labels: it reads the dataset
        from mtwork.pretrain.clip import train_tiny_clip

        settings = {"epochs": shared["epochs"], "batch_size": shared["batch_size"], **entry["pretrain"]}
        names = {path.name for path in _domain_train_images(params, args)}
        train_tiny_clip(args.data, args.out, seed=args.seed, num_threads=args.threads, progress=True,
                        image_names=names, **settings)
        return 0
    if entry["format"] not in PRETRAINERS or "pretrain" not in entry:
        raise UserError(
            f"checkpoint source '{args.source}' (format '{entry['format']}') has no embedded pretraining "
            f"(formats with one: {', '.join(PRETRAINERS.names())}; the entry needs a `pretrain` block)"
        )
    pretrain = PRETRAINERS.get(entry["format"])
    accepted = inspect.signature(pretrain).parameters
    for key in entry["pretrain"]:
        if key not in accepted or key in ("image_dirs", "out", "arch", "seed", "num_threads", "progress"):
            raise UserError(f"'checkpoints.catalog.{args.source}.pretrain.{key}' is not a setting of the {entry['format']} pretraining")
    images = _domain_train_images(params, args)
    # the entry's own settings win over the shared ones (e.g. a longer schedule for one method)
    settings = {"epochs": shared["epochs"], "batch_size": shared["batch_size"], "crop": shared["crop"], **entry["pretrain"]}
    pretrain(
        images,
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
        # Pipeline form: format, file and architecture come from params.yaml's checkpoint catalog
        # (the architecture from the entry's `arch`, else model.backbone); the file must agree.
        from mtwork.plan import source_arch, upstream_checkpoint_path

        params = _params(args)
        if args.source not in params["checkpoints"]["catalog"]:
            raise UserError(f"checkpoint source '{args.source}' is not in checkpoints.catalog of {args.params}")
        if args.arch is not None:
            raise SystemExit("mtwork import-checkpoint: --arch is for the --format form; with --source the "
                             "architecture is the catalog entry's `arch` or model.backbone")
        entry = params["checkpoints"]["catalog"][args.source]
        fmt = entry["format"]
        src, arch, out = upstream_checkpoint_path(params, args.source), source_arch(params, args.source), Path(args.src)
        origin = f"checkpoints.catalog.{args.source}.arch" if entry.get("arch") else "model.backbone"
    else:
        if args.format is None or args.out is None:
            raise SystemExit("mtwork import-checkpoint: give --format FORMAT SRC OUT, or --source NAME OUT")
        fmt, arch, out, origin = args.format, args.arch, args.out, "--arch"
        src = None if args.src in ("-", "none") else Path(args.src)
    report = import_checkpoint(fmt, src, out, arch=arch, seed=args.seed, arch_origin=origin)
    print(report.to_text())
    return 0


def cmd_download_checkpoint(args: argparse.Namespace) -> int:
    from mtwork.checkpoints.download import fetch_source

    print(fetch_source(args.name, args.dest, timeout=args.timeout, progress=True))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from mtwork.data.download import fetch_dataset

    dest = args.dest if args.dest is not None else Path("data") / args.dataset
    print(fetch_dataset(args.dataset, dest, cache=args.cache, allow_unverified=args.allow_unverified,
                        check=not args.no_check, delete_archives=args.delete_archives, timeout=args.timeout))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtwork.plan import is_vit_run, parse_run_id

    params = _params(args)
    try:
        run = parse_run_id(args.run)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:  # N processes of one data-parallel run, through torch's elastic launcher
        from mtwork.engine.launch import launch, strip_nproc

        return launch(args.nproc, strip_nproc(args.argv), debug=args.debug)
    if is_vit_run(params, run):  # source 2: a Swin-V2 source
        from mtwork.train_vit import train_vit_run

        train_vit_run(params, args.run, data_root=args.data, checkpoint=args.checkpoint, out_dir=args.out, domain=args.domain,
                      init_dir=args.init, target_data=args.target_data)
        return 0
    if args.init is not None or args.target_data is not None:
        raise UserError(f"run '{args.run}': --init and --target-data are for source 2's transfer runs")
    from mtwork.train import train_run

    train_run(params, args.run, data_root=args.data, checkpoint=args.checkpoint, out_dir=args.out, domain=args.domain)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one or more runs, writing each run's metrics where mtwork.plan puts them under
    --metrics-dir. Several runs in one process pay the start-up (importing torch, timm, torchvision:
    seconds on a small CPU) once: the workflow evaluates a whole checkpoint source per job."""
    from mtwork.plan import is_vit_run, metrics_path, parse_run_id

    params = _params(args)
    if len(args.dg_domain) != len(args.dg_data):
        raise UserError("give --dg-domain and --dg-data once per domain-generalization domain "
                         f"(got {len(args.dg_domain)} and {len(args.dg_data)})")
    for i, run_dir in enumerate(args.run_dir, 1):
        run_id = Path(run_dir).name
        print(f"[mtwork evaluate] run {i}/{len(args.run_dir)}: {run_id}", flush=True)
        if is_vit_run(params, parse_run_id(run_id)):
            _evaluate_vit(params, args, run_dir)
            continue
        from mtwork.evaluate import evaluate_run

        dg = [(d, root, metrics_path(run_id, "dg", d, args.metrics_dir)) for d, root in zip(args.dg_domain, args.dg_data)]
        out = metrics_path(run_id, args.protocol, args.domain, args.metrics_dir)
        evaluate_run(params, run_dir, data_root=args.data, out=out, protocol=args.protocol, domain=args.domain, dg=dg)
    return 0


def _evaluate_vit(params, args: argparse.Namespace, run_dir: Path) -> None:
    """A source-2 run on every domain the plan evaluates it on (``mtwork.plan.vit_evaluations``: where it
    trained, the DG domains, transfer targets), each domain's root from --data/--domain or a
    --dg-domain/--dg-data pair; the metrics go where ``mtwork.plan.vit_metrics_path`` puts them."""
    from mtwork.plan import parse_run_id, vit_evaluation_paths, vit_evaluations, vit_source_domain
    from mtwork.train_vit import evaluate_vit_run

    if args.protocol != "mtl":
        raise UserError(f"source 2's runs are evaluated where the plan says (their protocol is in the run id): "
                         f"no --protocol {args.protocol}")
    run = parse_run_id(Path(run_dir).name)
    planned = vit_evaluations(params)
    if run not in planned:
        raise UserError(f"run '{run.id}' is not a run of the vit block's plan (mtwork plan lists them)")
    roots = {args.domain or vit_source_domain(params): args.data, **dict(zip(args.dg_domain, args.dg_data))}
    missing = [d for d in planned[run] if d not in roots]
    if missing:
        raise UserError(f"run '{run.id}' is evaluated on {', '.join(planned[run])}: give the data of "
                         f"{', '.join(missing)} (--dg-domain NAME --dg-data ROOT)")
    (first, out), *rest = vit_evaluation_paths(params, run, planned[run], args.metrics_dir)
    evaluate_vit_run(params, run_dir, data_root=roots[first], out=out, domain=first,
                     dg=[(d, roots[d], path) for d, path in rest])


def cmd_tables(args: argparse.Namespace) -> int:
    from mtwork.report.tables import write_tables

    params = _params(args)
    if params["checkpoints"]["sources"]:  # source 1 (a source-2-only configuration lists no checkpoint source)
        write_tables(params, metrics_dir=args.metrics, runs_dir=args.runs, out_dir=args.out, figures_dir=args.figures)
    if params["vit"]["enabled"]:  # source 2's tables from results/metrics/vit and its runs' logs
        from mtwork.report.vit_protocol_tables import write_vit_protocol_tables
        from mtwork.report.vit_tables import write_vit_tables

        write_vit_tables(params, Path(args.metrics) / "vit", args.runs, args.out, args.figures)
        write_vit_protocol_tables(params, Path(args.metrics) / "vit", args.out)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from mtwork.bench import main as bench_main

    return bench_main(_params(args), args, sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else None)


def cmd_probe(args: argparse.Namespace) -> int:
    from mtwork.io import write_json
    from mtwork.plan import source_arch
    from mtwork.probe import ProbeSettings, probe_swin

    if not args.checkpoint and not args.random:
        raise UserError("nothing to probe: give --checkpoint FILE (repeatable) and/or --random")
    from mtwork.plan import domain, vit_source_domain

    params = _params(args)
    arch = args.arch or source_arch(params, params["vit"]["source"])
    size = tuple(params["vit"]["input_size"])
    name = args.domain or vit_source_domain(params)
    if name not in params["data"]["domains"]:
        raise UserError(f"domain '{name}' is not in data.domains (known: {', '.join(params['data']['domains'])})")
    attributes = domain(params, name).attributes
    settings = ProbeSettings(**({"steps": args.steps} if args.steps is not None else {}))
    encoders = [(str(c), c) for c in args.checkpoint] + ([(f"random (seed {args.seed})", None)] if args.random else [])
    records = []
    for label, checkpoint in encoders:
        record = probe_swin(args.data, arch, size, checkpoint, seed=args.seed, settings=settings, attributes=attributes)
        records.append(record)
        print(f"[mtwork probe] {label}: " + ", ".join(
            f"{name} mIoU {m['miou']:.1f} / acc {m['pixel_acc']:.1f}" for name, m in record["results"].items()),
            flush=True)
    if args.out is not None:
        write_json(args.out, {"encoders": records})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtwork", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the full traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "params",
        help="print the resolved settings as YAML (exit 1 when they would be refused)",
        description="Print the settings every mtwork command would use: the params file, then its `paper:` "
        "block when scale is paper (also after --set scale=paper), then the --set overrides, which win. The "
        "output is a complete params file (the paper block already applied): `--params` on it gives the same "
        "settings. Exit 1, after printing, when validation refuses them (the reason goes to stderr).",
    )
    _add_params(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("generate", help="write a SynthDrive domain in the BDD100K layout")
    _add_params(p)
    p.add_argument("--domain", action="append", default=[],
                   help="a SynthDrive visual preset, e.g. clear_day, dusk_fog; repeat to write several into one root "
                        "(default: data.synthdrive.domains)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=None, help="default: data.synthdrive.seed")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="validate a dataset; exit 1 when problems are found")
    c.add_argument("--format", default="bdd100k",
                   help="bdd100k (default), cityscapes, vkitti2, synthia, taskonomy or nyuv2")
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
    p.add_argument("--domain", default=None, help="use only this domain's images (default: data.source_domain)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "import-checkpoint",
        help="convert an upstream checkpoint to backbone weights + provenance",
        description="Either `--format FORMAT [--arch A] SRC OUT`, or `--source NAME OUT` to take the format, "
        "file and architecture from params.yaml's checkpoints.catalog. The architecture must agree with the one "
        "the file declares or its tensor shapes fit.",
    )
    _add_params(p)
    p.add_argument("--format", default=None, help="upstream format (moco, torchvision, timm, random, ...)")
    p.add_argument("--source", default=None, help="a checkpoints.catalog entry of the params file")
    p.add_argument("--arch", default=None,
                   help="backbone architecture (a timm name, clip:<open_clip name> or swin:<name>); default: the "
                        "one the file declares (e.g. MoCo's `arch`), else the one its tensor shapes fit; needed only "
                        "when the file is ambiguous, and an error when it contradicts the file")
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
        "download",
        help="fetch, verify and extract a dataset into the layout its reader expects (mtwork/data/download.py)",
        description="Public archives are downloaded resumably and checked against the published checksums; "
        "Cityscapes logs in with CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD; datasets behind a registration form "
        "stop with a message saying what to fetch, from where and where to put it. The result is checked with "
        "`mtwork data check` before it is moved to --dest.",
    )
    p.add_argument("--dataset", required=True, help="cityscapes, vkitti2, synthia, nyuv2, taskonomy or bdd100k")
    p.add_argument("--dest", type=Path, default=None, help="dataset root to create (default: data/<dataset>)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for the archives (default: <dest's parent>/.downloads/<dataset>)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept archives whose publisher gives no checksum (they are then not verified)")
    p.add_argument("--no-check", action="store_true", help="skip `mtwork data check` of the extracted data")
    p.add_argument("--delete-archives", action="store_true", help="delete the archives after a successful extraction")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per connection and per read")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "probe",
        help="linear-probe segmentation on frozen Swin-V2 features: does a pretrained encoder carry information?",
        description="Trains a 1x1 conv on each frozen stage map (and on all of them) of the encoder for semantic "
        "segmentation on the data root's train split and scores it on val (mtwork/probe.py). Input size: "
        "vit.input_size; arch: vit.source's, unless --arch.",
    )
    _add_params(p)
    p.add_argument("--data", required=True, type=Path, help="BDD100K-layout root with sem_seg labels")
    p.add_argument("--domain", default=None, help="the data.domains entry --data holds (default: source 2's source domain)")
    p.add_argument("--checkpoint", action="append", default=[], type=Path,
                   help="a converted Swin-V2 file (mtwork import-checkpoint); repeatable")
    p.add_argument("--random", action="store_true", help="also probe a randomly initialised Swin-V2 (the control)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of --random")
    p.add_argument("--arch", default=None, help="swin:<name> (default: the arch of vit.source)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps of each probe")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "train", help="train one run (adapt and/or finetune stages)",
        description="Train one run into --out; a run whose directory holds epoch checkpoints resumes after the "
        "last good one. --nproc N trains with N data-parallel processes on this machine (one per GPU; gloo on "
        "CPU); processes started by torchrun or srun are recognised from their environment (docs/training.md).")
    _add_params(p)
    p.add_argument("--run", required=True, help="run id SOURCE__PARADIGM__TASKS__sSEED")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--checkpoint", required=True, type=Path, help="converted backbone file")
    p.add_argument("--domain", default=None, help="the data.domains entry --data holds, trained on with its labels "
                   "(default: the run's: data.source_domain; source 2: vit.source_domain, a transfer's target)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this node (default 1; train.batch_size stays the global batch)")
    p.add_argument("--init", default=None, type=Path,
                   help="source 2's zero-shot and UDA runs: the folder of the multi-task run they start from")
    p.add_argument("--target-data", default=None, type=Path,
                   help="source 2's UDA runs: the root of the unlabelled target domain (the run id names it)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate trained runs on a domain's val split")
    _add_params(p)
    p.add_argument("--run-dir", required=True, type=Path, action="append", help="a run's folder; repeat for several runs")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path,
                   help="each run's metrics go to <run>.json, <protocol>/<domain>/<run>.json (e.g. dg/dusk_fog/), "
                        "vit/<run>.json or vit/<protocol>/<domain>/<run>.json under this folder (default: results/metrics)")
    p.add_argument("--protocol", default="mtl", choices=["mtl", "dg"])
    p.add_argument("--domain", default=None, help="the data.domains entry --data holds (default: data.source_domain)")
    p.add_argument("--dg-domain", action="append", default=[],
                   help="another data.domains entry: source 1's runs are also evaluated there (protocol dg); source 2's "
                        "runs on the domains the plan names (DG domains, transfer targets) take their data from these; repeat")
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


    p = sub.add_parser(
        "bench",
        help="training-step img/s per paradigm, loader img/s per worker, peak memory, MFU (docs/benchmarks.md)",
        description="Sections: step (source 1: every paradigm's training step against the bare timm backbone), "
        "vit (source 2: VTAGML against full finetuning), loader (one worker's img/s from 1280x720 SynthDrive "
        "JPEGs through BDD100KDataset + TrainTransform + collate). Defaults come from the params file; "
        "mtwork/bench.py documents what is measured and how.",
    )
    _add_params(p)
    p.add_argument("--sections", nargs="+", choices=["step", "vit", "loader"], default=["step", "vit", "loader"])
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: train.device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: train.threads)")
    p.add_argument("--batch", type=int, default=None, help="step batch size (default: train.batch_size)")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="step input size (default: train.input_size)")
    p.add_argument("--arch", default=None, help="source-1 backbone (default: model.backbone)")
    p.add_argument("--tasks", nargs="+", default=None, help="source-1 tasks (default: train.tasks)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model, in interleaved rounds (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: 2)")
    p.add_argument("--vit-arch", default=None, help="Swin-V2 name (default: the arch of vit.source)")
    p.add_argument("--vit-input-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="default: vit.input_size")
    p.add_argument("--vit-batch", type=int, default=None, help="default: vit.batch_size")
    p.add_argument("--loader-size", type=int, nargs=2, action="append", default=None, metavar=("H", "W"),
                   help="network input size of the loader benchmark; repeatable (default: 384 640 and 720 1280)")
    p.add_argument("--loader-images", type=int, default=16, help="SynthDrive images the loader reads (default: 16)")
    p.add_argument("--loader-image-size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"),
                   help="their size on disk (default: BDD100K's 720 1280)")
    p.add_argument("--loader-rounds", type=int, default=3, help="passes over the images; best and median (default: 3)")
    p.add_argument("--loader-batch", type=int, default=None, help="batch collated by the worker (default: --batch)")
    p.add_argument("--loader-data", type=Path, default=None,
                   help="keep the generated images here (reused when they match) instead of a temporary folder")
    p.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many worker processes")
    p.add_argument("--json", type=Path, default=None, help="write the whole record (machine, date, command, numbers) here")
    p.set_defaults(func=cmd_bench)

    for name, command in sub.choices.items():  # `mtwork train ... --debug` as well as `mtwork --debug train ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the full traceback of every error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the console script: a pipeline job may run in a warm process (mtwork.warmstart)
        from mtwork import warmstart

        if warmstart.enabled():
            code = warmstart.run_warm(sys.argv[1:])
            if code is not None:
                return code
    if not sys.stderr.isatty():
        # In job logs (Snakemake, Slurm) a progress bar redrawn many times a second buries the log:
        # redraw every 20 s instead. tqdm reads TQDM_* variables when it is first imported.
        os.environ.setdefault("TQDM_MININTERVAL", "20")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.debug = args.debug or os.environ.get("MTWORK_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        # Expected errors (bad params, data, files, run ids): one clear line, no traceback; the
        # message names the key or file. --debug (or MTWORK_DEBUG=1) shows the traceback too.
        if args.debug:
            traceback.print_exc()
        print(f"mtwork {args.command}: error{_rank_label()}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        # Anything else is a bug or an environment failure (CUDA out of memory, a crashed worker):
        # the full traceback stays in the job's log, and the last line says what happened.
        traceback.print_exc()
        print(f"mtwork {args.command}: unexpected error{_rank_label()} (traceback above)", file=sys.stderr)
        return 1


def _rank_label() -> str:
    """" (rank R)" in a process of a data-parallel run, so the lines of N processes can be told apart."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f" (rank {rank} of {world})" if rank is not None and world not in (None, "1") else ""


if __name__ == "__main__":
    sys.exit(main())
