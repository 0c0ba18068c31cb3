"""The evaluation report as documents: ``metrics.json`` (flat numbers for ``dvc metrics diff`` / ``dvc exp show``),
``report.md`` and ``report.html``, both showing the figures of ``figures/`` next to them (offline).

report.html is a small page that git tracks (a ``cache: false`` output, as report.md): it is a real file in every
DVC cache type, so it opens as a page where it lies. Were it cached, ``cache.type symlink`` would make it a link to a
cache file without an ``.html`` name, which a browser shows as text. Its pictures are the cached ``figures/`` files,
which browsers show through such links (an image is recognised by its bytes).

One unit everywhere: mIoU and stability are x100. Every delta is time-tuned minus start with its 95% bootstrap
interval over videos and the standard deviation over seeds; the verdict says "robust" only when the interval
excludes zero and every protocol variant agrees in sign.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timetuning.infra.files import atomic_path, write_text_atomic

PROTOCOL_LABELS = {
    "cluster_per_frame": "Clustering per frame", "cluster_per_clip": "Clustering per clip",
    "cluster_per_dataset": "Clustering per dataset", "linear": "Linear probe", "hummingbird": "Hummingbird retrieval",
    "jf_mean": "Label propagation J&F", "j_mean": "Label propagation J", "f_mean": "Label propagation F",
    "temporal_stability_per_frame": "Stability of per-frame clusters (%)",
    "temporal_stability_per_clip": "Stability of per-clip clusters (%)",
    "temporal_clip_minus_frame_miou": "Per-clip minus per-frame clustering",
}
HEADLINE = ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "linear", "hummingbird", "jf_mean")


def label(protocol: str) -> str:
    if protocol.startswith("overcluster_k"):
        return f"Overclustering K={protocol[len('overcluster_k'):]}"
    return PROTOCOL_LABELS.get(protocol, protocol)


def protocol_order(protocols: list[str]) -> list[str]:
    known = list(PROTOCOL_LABELS)
    over = sorted((p for p in protocols if p.startswith("overcluster_k")), key=lambda p: int(p[13:]))
    ordered = [p for p in known[:3] if p in protocols] + over + [p for p in known[3:] if p in protocols]
    return ordered + sorted(p for p in protocols if p not in ordered)


def x100(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------------------- metrics.json
def metrics_document(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat numbers (x100) per model, set and protocol; for each compared model its deltas, interval bounds and
    robustness; the all-background baseline; seed standard deviations."""
    out: dict[str, Any] = {}
    for set_name, doc in results.items():
        for model, m in doc["models"].items():
            out.setdefault(model, {})[set_name] = {k: round(100 * v["mean"], 4) for k, v in m["protocols"].items()
                                                   if v.get("mean") is not None}
            out.setdefault("seed_std", {}).setdefault(model, {})[set_name] = {
                k: round(100 * v["std"], 4) for k, v in m["protocols"].items() if v.get("std") is not None}
        facts = next(iter(doc["models"].values()))["facts"] if doc["models"] else {}
        if facts.get("all_background_miou") is not None:
            out.setdefault("baseline_all_background", {})[set_name] = round(100 * facts["all_background_miou"], 4)
        for model, comp in doc.get("comparisons", {}).items():
            prefix = "delta" if model == "timetuned" else f"delta_{model}"
            for key, suffix in (("delta", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                out.setdefault(prefix + suffix, {})[set_name] = {
                    k: round(100 * d[key], 4) for k, d in comp["deltas"].items() if d.get(key) is not None}
            out.setdefault(f"{prefix}_robustness", {})[set_name] = {
                k: {v: round(100 * d["delta"], 4) for v, d in variants.items()}
                for k, variants in comp["robustness"].items()}
    return out


# ---------------------------------------------------------------------------------------------- tables
def main_table(doc: dict[str, Any], baseline: str, tuned: str) -> list[list[str]]:
    """protocol | baseline | tuned | delta | 95% interval | seed std | verdict (all x100)."""
    base, tune = doc["models"][baseline], doc["models"][tuned]
    comp = doc["comparisons"].get(tuned, {})
    rows = [["protocol", baseline, tuned, "delta", "95% interval", f"seed std ({baseline} / {tuned})", "verdict"]]
    protocols = protocol_order(sorted(set(base["protocols"]) | set(base["not_applicable"])))
    for p in protocols:
        if p in base["not_applicable"]:
            rows.append([label(p), "n/a", "n/a", "n/a", "", "", base["not_applicable"][p]])
            continue
        b, t = base["protocols"][p], tune["protocols"].get(p, {})
        d = comp.get("deltas", {}).get(p)
        v = comp.get("verdicts", {}).get(p)
        rows.append([label(p), x100(b.get("mean")), x100(t.get("mean")), x100(d["delta"], True) if d else "-",
                     f"{x100(d['ci_low'], True)} to {x100(d['ci_high'], True)}" if d else "-",
                     f"{x100(b.get('std'))} / {x100(t.get('std'))}",
                     ("robust" if v["robust"] else "not robust") if v else "-"])
    return rows


def models_table(doc: dict[str, Any], reference: str) -> list[list[str]]:
    """protocol | the reference model | every other model: its value (its delta against the reference [95%
    interval]), ``*`` marking a robust delta (all x100)."""
    ref = doc["models"][reference]
    others = [m for m in doc["models"] if m != reference]
    rows = [["protocol", reference, *[f"{m} (delta [95% interval])" for m in others]]]
    for p in protocol_order(sorted(set(ref["protocols"]) | set(ref["not_applicable"]))):
        if p in ref["not_applicable"]:
            rows.append([label(p), "n/a", *["n/a" for _ in others]])
            continue
        row = [label(p), x100(ref["protocols"][p].get("mean"))]
        for m in others:
            value = doc["models"][m]["protocols"].get(p, {}).get("mean")
            comp = doc["comparisons"].get(m, {})
            d, v = comp.get("deltas", {}).get(p), comp.get("verdicts", {}).get(p)
            cell = x100(value)
            if d:
                cell += (f" ({x100(d['delta'], True)} [{x100(d['ci_low'], True)}, {x100(d['ci_high'], True)}])"
                         + ("*" if v and v["robust"] else ""))
            row.append(cell)
        rows.append(row)
    return rows


def robustness_table(doc: dict[str, Any], tuned: str) -> list[list[str]] | None:
    """Per protocol, the delta under TimeT's protocol and under each variant (x100, with intervals)."""
    comp = doc["comparisons"].get(tuned)
    if not comp or not comp["robustness"]:
        return None
    variants = sorted({v for d in comp["robustness"].values() for v in d})
    rows = [["protocol", "TimeT (default)", *variants, "agree in sign"]]
    for p in protocol_order(list(comp["robustness"])):
        main = comp["deltas"][p]
        cells = [f"{x100(main['delta'], True)} [{x100(main['ci_low'], True)}, {x100(main['ci_high'], True)}]"]
        for v in variants:
            d = comp["robustness"][p].get(v)
            cells.append(f"{x100(d['delta'], True)} [{x100(d['ci_low'], True)}, {x100(d['ci_high'], True)}]"
                         if d else "-")
        agree = not comp["verdicts"][p]["disagreeing_variants"]
        disagreeing = ", ".join(comp["verdicts"][p]["disagreeing_variants"])
        rows.append([label(p), *cells, "yes" if agree else "no: " + disagreeing])
    return rows


def per_class_table(doc: dict[str, Any], classes: list[str]) -> list[list[str]]:
    """Per-class IoU (x100) of every model for the protocols that report one."""
    columns = [(kind, model) for kind in ("linear", "cluster_per_dataset", "hummingbird") for model in doc["models"]
               if doc["models"][model]["protocols"].get(kind, {}).get("per_class_iou")]
    rows = [["class", *[f"{label(kind)}: {model}" for kind, model in columns]]]
    for c, name in enumerate(classes):
        row = [name]
        for kind, model in columns:
            iou = doc["models"][model]["protocols"][kind]["per_class_iou"]
            row.append("-" if c >= len(iou) or iou[c] is None else x100(iou[c]))
        rows.append(row)
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# ---------------------------------------------------------------------------------------------- documents
@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[list[str]]]] = field(default_factory=list)  # (caption, rows)
    figures: list[tuple[str, bytes, str]] = field(default_factory=list)  # (file name, png, caption)
    warning: str | None = None


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:4px 10px;"
         "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}"
         "figcaption{color:#555;font-size:.9em}.warning{background:#fff3cd;border:1px solid #e0b400;padding:.6em 1em;"
         "font-weight:bold}caption{text-align:left;color:#555;font-size:.9em;padding:.2em 0}.scroll{overflow-x:auto}")


def write_report(out_dir: Path, title: str, sections: list[Section]) -> None:
    """report.md and report.html, their figures as files under figures/ (linked by both)."""
    fig_dir = out_dir / "figures"
    md = [f"# {title}", ""]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        md += [f"## {s.heading}", ""]
        parts.append(f"<h2>{html.escape(s.heading)}</h2>")
        if s.warning:
            md += [f"> **Warning:** {s.warning}", ""]
            parts.append(f'<p class="warning">Warning: {html.escape(s.warning)}</p>')
        for text in s.paragraphs:
            md += [text, ""]
            parts.append(f"<p>{html.escape(text)}</p>")
        for caption, rows in s.tables:
            md += [f"*{caption}*", "", markdown_table(rows), ""]
            parts.append(f"<p><em>{html.escape(caption)}</em></p>{html_table(rows)}")
        for name, image, caption in s.figures:
            with atomic_path(fig_dir / name) as tmp:
                tmp.write_bytes(image)
            md += [f"![{caption}](figures/{name})", f"*{caption}*", ""]
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="figures/{html.escape(name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    write_text_atomic(out_dir / "report.md", "\n".join(md) + "\n")
    write_text_atomic(out_dir / "report.html", doc)
