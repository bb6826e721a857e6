"""Paper-style tables (Markdown, LaTeX booktabs, CSV) of the multi-task transfer study.

Rows are checkpoint source x paradigm; the single-task row of a source combines its three single-task
runs. Columns: semseg mIoU, drivable mIoU, det mAP, det mAP50, delta_m, trainable parameters, train
time. Per metric column the best value is bold and the second underlined, as in the paper.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.io import write_text
from mtwork.report.records import PARADIGM_LABEL, Row, Stat, baseline_runs, build_rows, read_records

# (task, metric, header, higher is better)
METRIC_COLUMNS: Sequence[Tuple[str, str, str, bool]] = (
    ("semseg", "miou", "Seg mIoU", True),
    ("drivable", "miou", "Drivable mIoU", True),
    ("det", "map", "Det mAP", True),
    ("det", "map50", "Det mAP50", True),
)
DELTA_HEADER = "Δm (%)"

DELTA_M_DEFINITION = (
    "Δm (Maninis et al., 2019) = mean over tasks of (-1)^l_t (M_t - M_single,t) / M_single,t x 100, "
    "with one primary metric per task (semseg mIoU, drivable mIoU, det mAP@[.5:.95]; all higher-is-better, l_t = 0), "
    "measured against the single-task runs of the same checkpoint source and seed"
)


def format_stat(stat: Optional[Stat], digits: int = 1) -> str:
    """'mean' or 'mean ± std' (std over seeds) at ``digits`` decimals; '–' when there is no value."""
    if stat is None or not stat.values:
        return "–"
    text = f"{stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f" ± {stat.std:.{digits}f}"
    return text


def _params_text(row: Row) -> str:
    if row.trainable_params is None:
        return "–"
    text = f"{row.trainable_params / 1e6:.2f} M"
    if row.adapt_trainable_params is not None:
        text += f" (adapt {row.adapt_trainable_params / 1e6:.2f} M)"
    return text


def _rank_marks(rows: Sequence[Row], value: Callable[[Row], Optional[float]], higher: bool) -> Dict[int, str]:
    """{row index: 'best' | 'second'} for one column (ties share a rank)."""
    vals = sorted({round(v, 6) for v in (value(r) for r in rows) if v is not None}, reverse=higher)
    marks: Dict[int, str] = {}
    for i, row in enumerate(rows):
        v = value(row)
        if v is None:
            continue
        if vals and round(v, 6) == vals[0]:
            marks[i] = "best"
        elif len(vals) > 1 and round(v, 6) == vals[1]:
            marks[i] = "second"
    return marks


def table_cells(rows: Sequence[Row]) -> Tuple[List[str], List[List[Tuple[str, str]]]]:
    """Headers and, per row, (text, mark) cells; mark is '', 'best' or 'second'."""
    headers = ["Checkpoint", "Paradigm"] + [h for _, _, h, _ in METRIC_COLUMNS] + [DELTA_HEADER, "Trainable params", "Train time (s)"]
    columns: List[Tuple[Callable[[Row], Optional[Stat]], bool, int]] = [
        ((lambda r, t=t, m=m: r.cells.get((t, m))), higher, 1) for t, m, _, higher in METRIC_COLUMNS
    ]
    columns.append(((lambda r: r.delta_m), True, 2))
    def ranked(get):  # delta_m is 0 by definition on single-task rows: rank the multi-task rows only
        is_delta = get is columns[-1][0]
        return lambda r: None if (is_delta and r.paradigm == "single_task") or not (get(r) and get(r).values) else get(r).mean

    marks = [_rank_marks(rows, ranked(get), higher) for get, higher, _ in columns]
    body = []
    for i, row in enumerate(rows):
        cells = [(row.source, ""), (PARADIGM_LABEL[row.paradigm], "")]
        for (get, _, digits), column_marks in zip(columns, marks):
            cells.append((format_stat(get(row), digits), column_marks.get(i, "")))
        cells.append((_params_text(row), ""))
        cells.append((format_stat(row.train_seconds, 0), ""))
        body.append(cells)
    return headers, body


def caption(title: str, rows: Sequence[Row], seeds: Sequence[int]) -> str:
    runs = ", ".join(baseline_runs(rows)) or "none"
    return (
        f"{title}. Mean ± std over seeds {list(seeds)}. {DELTA_M_DEFINITION}. Single-task runs: {runs}. "
        "Bold: best; underlined: second best; Δm '–': undefined, a single-task baseline scored 0. Trainable parameters are those of the last stage "
        "(the adapt stage's in parentheses); train time is the wall-clock time of all training epochs."
    )


def render_markdown(headers: List[str], body: List[List[Tuple[str, str]]], text_caption: str) -> str:
    def cell(text: str, mark: str) -> str:
        return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    lines += ["| " + " | ".join(cell(t, m) for t, m in row) + " |" for row in body]
    return "\n".join(lines) + f"\n\n{text_caption}\n"


def _latex_escape(text: str) -> str:
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "_%&#$":
        out = out.replace(ch, "\\" + ch)
    return out.replace("±", r"$\pm$").replace("Δm", r"$\Delta_m$").replace("–", "--")


def render_latex(headers: List[str], body: List[List[Tuple[str, str]]], text_caption: str, label: str) -> str:
    def cell(text: str, mark: str) -> str:
        text = _latex_escape(text)
        return rf"\textbf{{{text}}}" if mark == "best" else rf"\underline{{{text}}}" if mark == "second" else text

    spec = "ll" + "r" * (len(headers) - 2)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{_latex_escape(text_caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    previous_source = None
    for row in body:
        if previous_source is not None and row[0][0] != previous_source:
            lines.append(r"\midrule")
        previous_source = row[0][0]
        lines.append(" & ".join(cell(t, m) for t, m in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["source", "paradigm", "n_seeds"]
    for task, metric, _, _ in METRIC_COLUMNS:
        header += [f"{task}_{metric}_mean", f"{task}_{metric}_std"]
    header += ["delta_m_mean", "delta_m_std", "trainable_params", "adapt_trainable_params", "train_seconds_mean", "runs"]
    writer.writerow(header)
    for row in rows:
        line: List[Any] = [row.source, row.paradigm, len(row.train_seconds.values) if row.train_seconds else 0]
        for task, metric, _, _ in METRIC_COLUMNS:
            stat = row.cells.get((task, metric))
            line += [_num(stat.mean if stat else None), _num(stat.std if stat else None)]
        line += [
            _num(row.delta_m.mean if row.delta_m else None),
            _num(row.delta_m.std if row.delta_m else None),
            row.trainable_params if row.trainable_params is not None else "",
            row.adapt_trainable_params if row.adapt_trainable_params is not None else "",
            _num(row.train_seconds.mean if row.train_seconds else None),
            " ".join(row.runs),
        ]
        writer.writerow(line)
    return buf.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def write_table_set(rows: Sequence[Row], out_dir: Path, stem: str, title: str, seeds: Sequence[int]) -> None:
    headers, body = table_cells(rows)
    text_caption = caption(title, rows, seeds)
    write_text(out_dir / f"{stem}.md", f"## {title}\n\n" + render_markdown(headers, body, text_caption))
    write_text(out_dir / f"{stem}.tex", render_latex(headers, body, text_caption, f"tab:{stem}"))
    write_text(out_dir / f"{stem}.csv", render_csv(rows))


def write_tables(
    params: Mapping[str, Any], metrics_dir: Path, runs_dir: Path, out_dir: Path, figures_dir: Path
) -> List[Path]:
    """Render every table and figure; returns the files written."""
    from mtwork.report.figures import plot_delta_m, plot_training_curves

    metrics_dir, out_dir, figures_dir = Path(metrics_dir), Path(out_dir), Path(figures_dir)
    sources = params["checkpoints"]["sources"]
    tasks = params["train"]["tasks"]
    seeds = params["train"]["seeds"]
    records = read_records(metrics_dir)
    if not records:
        raise FileNotFoundError(f"no metrics JSON files in {metrics_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    domain = params["data"]["source_domain"]
    mtl_rows = build_rows(records, sources, tasks)
    write_table_set(mtl_rows, out_dir, "mtl", f"Multi-task transfer on {domain} (val)", seeds)
    figures = [figures_dir / "training_curves.png"]
    if any(r.paradigm != "single_task" for r in mtl_rows):
        figures.append(figures_dir / "delta_m.png")
        plot_delta_m(mtl_rows, figures[-1], f"Δm by checkpoint source and paradigm ({domain} val)")
    for dg_domain in params["data"]["dg_domains"]:
        dg_records = read_records(metrics_dir / "dg" / dg_domain)
        if not dg_records:
            raise FileNotFoundError(f"data.dg_domains lists '{dg_domain}' but {metrics_dir / 'dg' / dg_domain} holds "
                                    "no metrics (dvc.yaml evaluates only the first DG domain: run more through Snakemake)")
        if dg_records:
            write_table_set(
                build_rows(dg_records, sources, tasks),
                out_dir,
                f"dg_{dg_domain}",
                f"Domain generalization: trained on {domain}, evaluated on {dg_domain} without training there",
                seeds,
            )
    written = sorted(out_dir.iterdir())
    plot_training_curves(Path(runs_dir), [r["run"] for r in records], figures[0])
    print(f"[mtwork tables] wrote {', '.join(p.name for p in written)} and {', '.join(str(f) for f in figures)}")
    return written
