"""report.html: one self-contained page per run (pictures embedded as data URIs, so the file can be
moved or mailed alone) with the config, the metrics, the plots, the progress strip and the samples."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from finetune.io import write_bytes_atomic

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin: 32px 0 12px; font-size: 20px; }
.subtitle { color: #555d6b; margin: 0 0 16px; }
section { background: #fff; border-radius: 8px; padding: 16px 20px; margin-bottom: 16px; box-shadow: 0 1px 2px #0002; }
table { border-collapse: collapse; } td, th { padding: 4px 14px 4px 0; text-align: left; vertical-align: top; }
th { color: #555d6b; font-weight: 600; } td.num { font-variant-numeric: tabular-nums; }
figure { margin: 0 0 16px; } figure img { max-width: 100%; height: auto; border: 1px solid #dde1e6; }
figcaption { color: #555d6b; font-size: 14px; margin-top: 4px; }
.scroll { overflow-x: auto; }
pre { background: #f4f5f7; padding: 12px; overflow-x: auto; font-size: 13px; }
code { background: #f4f5f7; padding: 1px 4px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    return str(value)


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td class=num>{_e(_format(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _image(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _figures(pictures: dict[str, Path], captions: dict[str, str]) -> str:
    return "".join(_image(pictures[name], name, text) for name, text in captions.items() if name in pictures)


def metric_rows(metrics: dict) -> list[tuple[str, object]]:
    """The metrics worth a row: everything but the per-step histories, sampling settings and tables."""
    rows = _flatten({k: v for k, v in metrics.items() if not k.endswith("_history") and k != "sampling"
                     and v is not None and not _is_table(v)})
    embedding = metrics.get("embedding_history") or {}
    if embedding.get("cosine_to_init"):
        rows.append(("final cosine similarity to the initial vectors", embedding["cosine_to_init"][-1]))
    return rows


def _is_table(value) -> bool:
    """A dict of dicts (e.g. scores per prompt) reads best as a table: one row per key."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _grid_table(values: dict) -> str:
    rows = {key: dict(_flatten(row)) for key, row in values.items()}
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    head = "".join(f"<th>{_e(c)}</th>" for c in ["", *columns])
    body = "".join(f"<tr><th>{_e(key)}</th>" + "".join(f"<td class=num>{_e(_format(row.get(c, '')))}</td>"
                                                       for c in columns) + "</tr>" for key, row in rows.items())
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def metric_tables(metrics: dict) -> str:
    return "".join(f"<h3>{_e(key)}</h3>{_grid_table(value)}" for key, value in metrics.items() if _is_table(value))


def render_report(title: str, subtitle: str, metrics: dict, pictures: dict[str, Path], config_yaml: str,
                  overrides: list[str], files: list[str]) -> str:
    sampling = metrics.get("sampling") or {}
    overrides_html = "".join(f"<li><code>{_e(o)}</code></li>" for o in overrides) or "<li>none (the defaults)</li>"
    files_html = "".join(f'<li><a href="{_e(f)}">{_e(f)}</a></li>' for f in files)
    plots = _figures(pictures, {
        "loss": "Loss of every step (light) and smoothed (dark), the validation loss on one fixed batch (red) and "
                "where early stopping's criterion held (dashed; shaded: the cooldown to the stop); the learning "
                "rate below.",
        "scores": "Quality scores of the eval prompts rendered during training (eval.score_every); the dashed "
                  "line marks the step of learned_embeds-best.safetensors.",
        "embedding_norm": "Norm of each learned vector and its cosine similarity to the vector it started from.",
    })
    progress = _figures(pictures, {"progress": "The preview prompt and seed across training steps."})
    samples = _figures(pictures, {"samples/grid": "The eval prompts with the learned token, labelled with prompt "
                                                  "and seed."})
    sampling_html = _table([(k, v) for k, v in sampling.items() if k != "prompts"]) if sampling else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{STYLE}</style></head>
<body><main>
<h1>{_e(title)}</h1><p class="subtitle">{_e(subtitle)}</p>
<section><h2>Metrics</h2>{_table(metric_rows(metrics))}{metric_tables(metrics)}</section>
<section><h2>Training</h2>{plots or "<p>No training steps in this run.</p>"}</section>
<section><h2>Progress</h2>{progress or "<p>No previews (set <code>eval.preview_every</code>).</p>"}</section>
<section><h2>Samples</h2>{samples or "<p>No samples (<code>eval.enabled=false</code>).</p>"}{sampling_html}</section>
<section><h2>Config</h2><h3>Overrides</h3><ul>{overrides_html}</ul>
<details><summary>The composed config</summary><pre>{_e(config_yaml)}</pre></details></section>
<section><h2>Files</h2><ul>{files_html}</ul></section>
</main></body></html>
"""


def write_report(path: str | Path, **parts) -> Path:
    return write_bytes_atomic(path, render_report(**parts).encode("utf-8"), "report")
