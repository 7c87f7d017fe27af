"""``specbench report --html``: one self-contained HTML page (no network at view time).

Tables are the same :mod:`specbench.report.tables` data the terminal shows; plots are the
report's PNGs embedded as base64 data URIs; the page has no scripts, so nothing can fail to
load or log an error when it is opened.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from specbench.report.results import ResultsFile
from specbench.report.tables import TableData, comparison_data, file_tables, noise_notes

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #1d232a; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.5rem;
       border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h3 { font-size: 1.05rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: .8rem;
          padding-top: .3rem; }
details summary { cursor: pointer; color: #57606a; }
.note { color: #9a6700; background: #fff8c5; padding: .3rem .6rem; margin: .2rem 0; }
.plots img { max-width: 100%; border: 1px solid #d0d7de; margin: .5rem 0; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def table_html(table: TableData, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="{"num" if table.numeric[i] else "text"}">{html.escape(cell)}</td>'
            for i, cell in enumerate(row)
        )
        rows.append(f'<tr data-row="{html.escape(row[0])}">{cells}</tr>')
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    title = f"<h3>{html.escape(table.title)}</h3>" if table.title else ""
    return (
        f'{title}<table id="{html.escape(table_id)}" data-key="{html.escape(table.key)}">'
        f"{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem.replace("_", " "))
    image = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{alt}</figcaption></figure>"


def _environment(result: ResultsFile) -> str:
    header = result.header
    keep = {
        "run_id": header.run_id,
        "started_at": header.started_at,
        "preset": header.preset_name,
        "preset_hash": header.preset_hash,
        "seed": header.seed,
        "load_at_start": header.load,
        "models": header.models,
        "environment": {k: v for k, v in header.environment.items() if k != "argv"},
    }
    text = html.escape(json.dumps(keep, indent=2, default=str))
    env = header.environment
    summary = html.escape(
        f"specbench {env.get('specbench')}, torch {env.get('torch')}, {env.get('cpu')}, "
        f"{env.get('cpu_count')} CPUs, started {header.started_at}"
    )
    return f"<details><summary>{summary}</summary><pre>{text}</pre></details>"


def render_html(results: Sequence[ResultsFile], plots: Sequence[Path]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>specbench report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>specbench report</h1>",
        f"<p>{len(results)} results file(s); written "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
    ]
    for index, result in enumerate(results):
        parts.append(f'<section id="file-{index}"><h2>{html.escape(result.label)}</h2>')
        for note in noise_notes(result.summaries):
            parts.append(f'<p class="note">note: {html.escape(note)}</p>')
        for table in file_tables(result):
            if table.key == "summary":
                table.title = "Summary"
            parts.append(table_html(table, f"{table.key}-{index}"))
        parts.append("<h3>Run environment</h3>" + _environment(result) + "</section>")
    if len(results) > 1:
        parts.append('<section id="all"><h2>All files</h2>')
        parts.append(table_html(comparison_data(results), "comparison") + "</section>")
    if plots:
        parts.append('<section class="plots" id="plots"><h2>Plots</h2>')
        parts += [_image(path) for path in plots]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(results: Sequence[ResultsFile], plots: Sequence[Path], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(results, plots), encoding="utf-8")
    return path
