"""One table layout for every report table: cells from seed statistics, marks from Welch's test, and
the same table as Markdown, LaTeX (booktabs) and CSV.

A table is a ``TableSpec`` (which row keys label the rows, which columns, how rows are ranked) applied
to the long frame of ``mtwork.report.records``. Each cell shows mean ± std over seeds, the 95 % interval
for Δm and the primary metrics, and a mark only where the difference exceeds the seed noise
(``mtwork.report.stats.rank``). Every table carries n (in its caption when every cell has the same n,
else an ``n`` column) and a signal note that says which differences exceed the seed noise.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from mtwork.evaluate import PRIMARY_METRIC
from mtwork.io import write_text
from mtwork.report import stats
from mtwork.report.records import ROW, SINGLE_TASK, row_notes, row_runs, row_seeds, summarize

Stat = Mapping[str, Any]  # one line of records.summarize: mean, std, n, undefined, ci_low, ci_high


@dataclass(frozen=True)
class Column:
    """One value column of a table.

    ``id``: the long frame's ``column``; ``header``: its heading; ``digits``: decimals shown;
    ``higher``: True/False ranks the column (higher/lower is better), None leaves it unranked;
    ``interval``: show the 95 % interval (Δm and the primary metrics); ``spread``: show ± std (False for
    counts that are the same for every seed); ``scale``/``unit``: shown value = value / scale, then unit;
    ``reference``: the single-task row is this column's reference by definition (Δm = 0): shown as such and
    not ranked; ``render``: a custom cell text from the row's statistics {column id: Stat}.
    """

    id: str
    header: str
    digits: int = 1
    higher: Optional[bool] = None
    interval: bool = False
    spread: bool = True
    scale: float = 1.0
    unit: str = ""
    reference: bool = False
    render: Optional[Callable[[Mapping[str, Stat]], str]] = None


@dataclass
class TableSpec:
    """What a table shows.

    ``keys``: (row key, header) pairs that label each row, first the one that separates row groups in
    LaTeX; ``key_text(key, value)``: the label text of a key value; ``order``: sort key of a row from its
    key values; ``groups``: row keys whose values are ranked separately (source 2 ranks within each task
    set), ``group_name``: what one such group is called; ``csv_extra``: further long-frame columns for the
    CSV (None: every other column present).
    """

    title: str
    keys: Sequence[Tuple[str, str]]
    columns: Sequence[Column]
    order: Callable[[Mapping[str, str]], Any]
    key_text: Callable[[str, str], str] = lambda key, value: value
    groups: Sequence[str] = ()
    group_name: str = ""  # what one group is called in captions, e.g. "task set"
    csv_extra: Optional[Sequence[str]] = None


@dataclass
class Table:
    """A built table: rendered cells and marks, plus the notes captions need."""

    spec: TableSpec
    headers: List[str]
    body: List[List[Tuple[str, str]]]  # per row: (text, mark) per column; mark "", BEST, SECOND or TIED
    rows: List[Dict[str, str]]  # per row: its ROW key values
    labels: List[str]  # per row: its label keys as text (for notes)
    stats: Dict[Tuple[Tuple[str, ...], str], Stat]  # (row id, column id) -> Stat
    marks: Dict[Tuple[int, str], str]  # (row index, column id) -> mark
    runs: List[List[str]]
    row_seeds: List[List[int]]
    notes: List[str]  # per row: why its Δm is undefined ("" when defined)
    seeds: List[int]  # every seed in the table
    n_text: str  # how many seeds a cell aggregates
    signal: str  # which differences exceed the seed noise
    rule_text: str  # what the cell format and the marks mean


def _fmt(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def cell_text(stat: Optional[Stat], column: Column, row_n: int) -> str:
    """'mean ± std [ci_low, ci_high]' as the column asks, '–' without a value; ' (n=k)' when k ≠ the row's n."""
    if stat is None or stat["undefined"] > 0 or math.isnan(stat["mean"]):
        return "–"
    n = int(stat["n"])
    text = _fmt(stat["mean"] / column.scale, column.digits)
    if column.spread and n >= 2:
        text += f" ± {_fmt(stat['std'] / column.scale, column.digits)}"
    text += column.unit
    if column.interval and n >= 2:
        text += f" [{_fmt(stat['ci_low'] / column.scale, column.digits)}, {_fmt(stat['ci_high'] / column.scale, column.digits)}]"
    if n != row_n:
        text += f" (n={n})"
    return text


def build_table(frame: pd.DataFrame, spec: TableSpec) -> Table:
    """Aggregate ``frame`` over seeds (pandas group by -> mean, std, n, interval) and lay out ``spec``."""
    if frame.empty:
        raise ValueError(f"{spec.title}: no records to tabulate")
    summary = summarize(frame)
    stat_of: Dict[Tuple[Tuple[str, ...], str], Stat] = {
        (tuple(idx[:-1]), idx[-1]): line for idx, line in zip(summary.index, summary.to_dict("records"))
    }
    runs_of, seeds_of, notes_of = row_runs(frame), row_seeds(frame), row_notes(frame)
    row_ids = sorted(runs_of, key=lambda rid: spec.order(dict(zip(ROW, rid))))
    rows = [dict(zip(ROW, rid)) for rid in row_ids]
    shown = [k for k, _ in spec.keys]
    # a row key the spec does not show becomes a column where rows would otherwise look alike: several
    # non-empty values (e.g. both adapter placements), or rows that only it tells apart
    hidden = [k for k in ROW if k not in shown]

    def needed(key: str) -> bool:
        if len({r[key] for r in rows} - {""}) > 1:
            return True
        others = [tuple(r[k] for k in ROW if k != key) for r in rows]
        return len(set(others)) < len(others)

    extra = [(k, k) for k in hidden if needed(k)]
    keys = list(spec.keys) + extra
    row_n = [len(seeds_of[rid]) for rid in row_ids]

    def is_reference(row: Mapping[str, str], column: Column) -> bool:
        return column.reference and row["paradigm"] == SINGLE_TASK

    marks: Dict[Tuple[int, str], str] = {}
    rankings: List[Tuple[Column, Tuple[str, ...], List[int], stats.Ranking]] = []
    for column in spec.columns:
        if column.higher is None:
            continue
        for group in dict.fromkeys(tuple(r[g] for g in spec.groups) for r in rows):
            idx = [i for i, r in enumerate(rows) if tuple(r[g] for g in spec.groups) == group]
            samples = []
            for i in idx:
                stat = stat_of.get((row_ids[i], column.id))
                if stat is None or is_reference(rows[i], column) or stat["undefined"] > 0:
                    samples.append(None)
                else:
                    samples.append(stats.Sample(float(stat["mean"]), float(stat["std"]), int(stat["n"])))
            ranking = stats.rank(samples, column.higher)
            shown = {_fmt(m / column.scale, column.digits) for m in ranking.means if not math.isnan(m)}
            if len(shown) == 1 and sum(not math.isnan(m) for m in ranking.means) > 1:
                # every row shows the same value: a mark between equal-looking cells would only confuse
                first = next(i for i, m in enumerate(ranking.means) if not math.isnan(m))
                ranking = stats.Ranking([""] * len(samples), ranking.means, "equal", best=first)
            for i, mark in zip(idx, ranking.marks):
                if mark:
                    marks[(i, column.id)] = mark
            rankings.append((column, group, idx, ranking))

    n_values = {int(stat_of[(rid, c.id)]["n"]) for rid in row_ids for c in spec.columns if (rid, c.id) in stat_of}
    constant_n = len(set(row_n)) == 1 and n_values <= {row_n[0]}
    headers = [h for _, h in keys] + ([] if constant_n else ["n"]) + [c.header for c in spec.columns]
    labels, body = [], []
    for i, (rid, row) in enumerate(zip(row_ids, rows)):
        cells = [(spec.key_text(k, row[k]), "") for k, _ in keys]
        labels.append(" ".join(text for (k, _), (text, _) in zip(keys, cells) if k not in spec.groups))
        if not constant_n:
            cells.append((str(row_n[i]), ""))
        row_stats = {c: s for (r, c), s in stat_of.items() if r == rid}
        for column in spec.columns:
            if is_reference(row, column):
                text = "0 (reference)"
            elif column.render is not None:
                text = column.render(row_stats)
            else:
                text = cell_text(stat_of.get((rid, column.id)), column, row_n[i])
            cells.append((text, marks.get((i, column.id), "")))
        body.append(cells)
    seeds = sorted({s for rid in row_ids for s in seeds_of[rid]})
    table = Table(spec, headers, body, rows, labels, stat_of, marks, [runs_of[rid] for rid in row_ids],
                  [seeds_of[rid] for rid in row_ids], [notes_of.get(rid, "") for rid in row_ids], seeds,
                  n_text(row_n, constant_n, seeds), "", rule_text(spec, max(row_n)))
    table.signal = signal_text(table, rankings, row_n)
    return table


def delta_m_definition(tasks: Sequence[str], higher: Mapping[str, bool]) -> str:
    """The Δm definition every caption names (both lines of work); ``higher[task]``: its primary metric's direction."""
    primary = ", ".join(f"{t} {PRIMARY_METRIC[t]}" for t in tasks)
    lower = [f"{t} {PRIMARY_METRIC[t]}" for t in tasks if not higher.get(t, True)]
    flip = (f"; l_t = 1 where lower is better ({', '.join(lower)}), so a lower error than the single-task run "
            "counts as a gain" if lower else "; all higher-is-better, l_t = 0")
    return (
        f"Δm (Maninis et al. 2019, single-task baselines, primary metrics: {primary}) = mean over the row's tasks "
        f"of (-1)^l_t (M_t - M_single,t) / M_single,t × 100{flip}. Δm is computed per seed, each multi-task run "
        "against the single-task runs of the same checkpoint source and seed, then aggregated over seeds like "
        "every other column; it is undefined ('–') where a seed lacks a baseline or a baseline scored 0"
    )


def n_text(row_n: Sequence[int], constant: bool, seeds: Sequence[int]) -> str:
    if constant and row_n[0] == 1:
        return f"One seed (n = 1, seed {seeds[0]}): no std, no 95 % interval, nothing highlighted"
    if constant:
        return f"n = {row_n[0]} seeds per cell (seeds {', '.join(map(str, seeds))})"
    return (f"n: seeds per row (seeds {', '.join(map(str, seeds))}); a cell over fewer seeds says (n=k); "
            "cells over one seed have no std and no interval")


def rule_text(spec: TableSpec, max_n: int) -> str:
    where = f"per column within each {spec.group_name or ' / '.join(spec.groups)}" if spec.groups else "per column"
    text = (
        "Cells: mean ± std over seeds (sample std, ddof 1)"
        + ("; [a, b]: 95 % interval of the mean over seeds, mean ± t(0.975, n-1) × std / sqrt(n) (Student t), "
           "for Δm and each primary metric" if any(c.interval for c in spec.columns) else "")
        + "; '–': no value."
    )
    if max_n < 2:
        return text + " With one seed no difference can be told from seed noise, so no cell is highlighted."
    return text + (
        f" Marks ({where}), only where a difference exceeds the seed noise by Welch's two-sided t-test at the "
        "5 % level over seeds (pairwise, uncorrected): bold = best, better than every other row; underlined = "
        "runner-up under a bold best, better than every row below it; † = cannot be told apart from the best "
        "(p ≥ 0.05): these cells share rank 1. A column without marks has no row that differs from its best "
        "beyond seed noise; rows with one seed are never separated from another row."
    )


def _names(table: Table, idx: Sequence[int], limit: int = 4) -> str:
    if len(idx) > limit:
        return f"{len(idx)} rows"
    return ", ".join(table.labels[i] for i in idx)


def signal_text(table: Table, rankings, row_n: Sequence[int]) -> str:
    """The table's signal note: per ranked column (and group), which differences exceed the seed noise,
    and which columns show the same value in every row (the compared models do not differ there)."""
    n = f"n = {min(row_n)}" if min(row_n) == max(row_n) else f"n = {min(row_n)}-{max(row_n)}"
    quiet: Dict[str, List[str]] = {}  # column header -> groups where nothing exceeds the noise
    found: List[str] = []  # differences beyond the seed noise
    equal: Dict[str, List[str]] = {}  # column header -> "group value" where every row shows the same value
    for column, group, idx, ranking in rankings:
        group_text = ", ".join(table.spec.key_text(g, v) for g, v in zip(table.spec.groups, group))
        where = column.header + (f" ({group_text})" if group else "")
        if ranking.status == "equal":
            value = _fmt(ranking.means[ranking.best] / column.scale, column.digits) + column.unit
            equal.setdefault(column.header, []).append(f"{group_text} {value}" if group else value)
        elif ranking.status in ("none", "one_seed"):
            quiet.setdefault(column.header, []).append(group_text)
        elif ranking.status == "best":
            text = f"{where}: {table.labels[idx[ranking.best]]} is best beyond seed noise"
            if ranking.second is not None:
                text += f", {table.labels[idx[ranking.second]]} second"
            found.append(text)
        elif ranking.status == "tied":
            below = f"{ranking.below} row{'s' if ranking.below != 1 else ''}"
            found.append(f"{where}: {_names(table, [idx[i] for i in ranking.tied])} share the best (†), "
                         f"{below} below them beyond seed noise")
    same = ([("the same value in every row, so the compared models do not differ on: "
              + ", ".join(f"{h} ({'; '.join(v)})" for h, v in equal.items()))] if equal else [])
    if max(row_n) < 2:
        return "; ".join([f"Signal: one seed ({n}): no difference can be told from seed noise"] + same) + "."
    quiet_text = ", ".join(h + (f" ({', '.join(g)})" if any(g) else "") for h, g in quiet.items())
    if not found:
        parts = ["no difference exceeds seed noise in any column"]
    else:
        parts = found + ([f"no difference exceeds seed noise in {quiet_text}"] if quiet else [])
    return f"Signal ({n}, Welch's t-test at 5 %): " + "; ".join(parts + same) + "."


# ---- Markdown, LaTeX, CSV -----------------------------------------------------------------------

MARK_TEXT = {stats.BEST: "bold", stats.SECOND: "underlined", stats.TIED: "†"}


def render_markdown(table: Table, caption: str) -> str:
    """A GitHub Markdown table, then the caption and the signal note as paragraphs."""
    def cell(text: str, mark: str) -> str:
        if mark == stats.BEST:
            return f"**{text}**"
        if mark == stats.SECOND:
            return f"<u>{text}</u>"
        return f"{text} †" if mark == stats.TIED else text

    n_keys = len(table.headers) - len(table.spec.columns)
    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join(["---"] * n_keys + ["---:"] * len(table.spec.columns)) + "|"]
    lines += ["| " + " | ".join(cell(t, m) for t, m in row) + " |" for row in table.body]
    return "\n".join(lines) + f"\n\n{caption}\n\n{table.signal}\n"


# Characters the tables use, as LaTeX that compiles under pdflatex; "\\" and the specials first, so that
# the replacements' own backslashes, braces, "$" and "^" are not escaped again.
_LATEX = (
    ("\\", r"\textbackslash{}"), ("{", r"\{"), ("}", r"\}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
    ("#", r"\#"), ("$", r"\$"), ("^", r"\textasciicircum{}"), ("~", r"\textasciitilde{}"),
    ("±", r"$\pm$"), ("Δm", r"$\Delta_m$"), ("Δ", r"$\Delta$"), ("–", "--"), ("δ", r"$\delta$"),
    ("<", r"\textless{}"), (">", r"\textgreater{}"), ("≥", r"$\geq$"), ("°", r"$^\circ$"),
    ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("†", r"\textsuperscript{\dag}"), ("×", r"$\times$"),
)


def latex_escape(text: str) -> str:
    """Plain text (with the tables' symbols: ± Δ δ ° ↑ ↓ † ...) as LaTeX."""
    for char, replacement in _LATEX:
        text = text.replace(char, replacement)
    return text


def render_latex(table: Table, caption: str, label: str) -> str:
    """A booktabs table float: caption, the tabular (a rule between groups of the first key), signal note."""
    def cell(text: str, mark: str) -> str:
        text = latex_escape(text)
        if mark == stats.BEST:
            return rf"\textbf{{{text}}}"
        if mark == stats.SECOND:
            return rf"\underline{{{text}}}"
        return text + r"\textsuperscript{\dag}" if mark == stats.TIED else text

    n_keys = len(table.headers) - len(table.spec.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{'l' * n_keys + 'r' * len(table.spec.columns)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in table.headers) + r" \\",
        r"\midrule",
    ]
    first = table.spec.keys[0][0]
    for i, row in enumerate(table.body):
        if i and table.rows[i][first] != table.rows[i - 1][first]:
            lines.append(r"\midrule")
        lines.append(" & ".join(cell(t, m) for t, m in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", rf"{{\footnotesize {latex_escape(table.signal)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


def render_csv(table: Table) -> str:
    """Machine-readable: per row its ROW keys, n_seeds, seeds, per column mean, std, n, ci_low, ci_high (and
    the mark of ranked columns: best, second, tied_best or empty), then its runs. Raw numbers, empty where
    there is no value; Δm of a single-task row is its reference 0."""
    present = list(dict.fromkeys(c for (_, c) in table.stats))
    ids = [c.id for c in table.spec.columns if c.render is None or c.id in present]
    extra = table.spec.csv_extra if table.spec.csv_extra is not None else sorted(c for c in present if c not in ids)
    ids += [c for c in extra if c not in ids and c in present]
    ranked = {c.id for c in table.spec.columns if c.higher is not None}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = list(ROW) + ["n_seeds", "seeds"]
    for cid in ids:
        header += [f"{cid}_{s}" for s in ("mean", "std", "n", "ci_low", "ci_high")] + ([f"{cid}_mark"] if cid in ranked else [])
    writer.writerow(header + ["runs"])
    for i, row in enumerate(table.rows):
        rid = tuple(row[k] for k in ROW)
        seeds = table.row_seeds[i]
        line: List[Any] = [row[k] for k in ROW] + [len(seeds), " ".join(map(str, seeds))]
        for cid in ids:
            stat = table.stats.get((rid, cid))
            if stat is None:
                line += [""] * 5
            else:
                undefined = stat["undefined"] > 0
                line += [_num(None if undefined else stat[s]) for s in ("mean", "std")] + [_num(stat["n"])]
                line += [_num(None if undefined else stat[s]) for s in ("ci_low", "ci_high")]
            if cid in ranked:
                line.append(table.marks.get((i, cid), ""))
        writer.writerow(line + [" ".join(table.runs[i])])
    return buf.getvalue()


def write_table(table: Table, out_dir: Path, stem: str, caption: str) -> List[Path]:
    """``<stem>.md`` (with a "## title" heading), ``.tex`` and ``.csv`` in ``out_dir``, written atomically."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    write_text(paths[0], f"## {table.spec.title}\n\n" + render_markdown(table, caption))
    write_text(paths[1], render_latex(table, caption, f"tab:{stem}"))
    write_text(paths[2], render_csv(table))
    return paths
