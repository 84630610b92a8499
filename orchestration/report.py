"""The replay report: on the terminal, as report.json and as report.html with plots.

Figures (definitions, so the numbers can be read without the code):

- payments/s: payments answered / wall time of the replay;
- latency p50/p95/p99: per HTTP request, client side (a batch request's latency
  counts for each of its payments);
- frauds caught: frauds not allowed outright (blocked, sent to review or asked
  for 3-D Secure), count and amount; frauds blocked separately;
- false declines: genuine payments blocked;
- authorization rate: share of payments allowed or challenged (a genuine
  customer passes 3-D Secure);
- AP: average precision of the live scores; card precision@100: the handbook's
  daily top-100 cards measure (models/metrics.py);
- agreement: the live scores against backtest-style scores (build_examples +
  Scorer, same model) of the same payments.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.metrics import average_precision, card_precision_at_k

DECISIONS = ("allow", "challenge", "review", "block")


def build_report(result: Any, offline: pd.Series | None) -> dict[str, Any]:
    frame = result.frame
    n = len(frame)
    fraud = frame["tx_fraud"].to_numpy() == 1
    decision = frame["decision"].to_numpy()
    latency = frame["latency_ms"].to_numpy()
    caught = fraud & (decision != "allow")
    blocked = fraud & (decision == "block")
    cp100, _ = card_precision_at_k(
        frame["tx_datetime"], frame["customer_key"], frame["tx_fraud"], frame["score"]
    )
    report = {
        "window": {"from": str(result.start), "to": str(result.end)},
        "url": result.url,
        "batch_size": result.batch_size,
        "payments": n,
        "labels_sent": result.labels_sent,
        "wall_s": round(result.wall_s, 2),
        "payments_per_s": round(n / result.wall_s, 1) if result.wall_s else None,
        "latency_ms": {
            f"p{q}": round(float(np.percentile(latency, q)), 2) for q in (50, 95, 99)
        },
        "decisions": {d: int((decision == d).sum()) for d in DECISIONS},
        "frauds": int(fraud.sum()),
        "frauds_caught": int(caught.sum()),
        "frauds_caught_amount": round(float(frame["tx_amount"][caught].sum()), 2),
        "frauds_blocked": int(blocked.sum()),
        "fraud_amount": round(float(frame["tx_amount"][fraud].sum()), 2),
        "false_declines": int((~fraud & (decision == "block")).sum()),
        "authorization_rate": round(
            float(np.isin(decision, ("allow", "challenge")).mean()), 4
        ),
        "average_precision": _round(
            average_precision(fraud.astype(int), frame["score"])
        ),
        "card_precision_at_100": _round(cp100),
        "model_versions": sorted(set(frame["model_version"])),
        "actuation_modes": sorted(set(frame["actuation_mode"])),
        "duplicates": int(frame["duplicate"].sum()),
        "agreement": agreement(frame, offline),
    }
    return report


def agreement(frame: pd.DataFrame, offline: pd.Series | None) -> dict[str, Any]:
    """Live against offline scores of the same payments."""
    if offline is None:
        return {"available": False}
    joined = frame.set_index("payment_key")["score"].to_frame("online")
    joined["offline"] = offline.reindex(joined.index)
    joined = joined.dropna()
    if joined.empty:
        return {"available": False}
    diff = (joined["online"] - joined["offline"]).abs()
    return {
        "available": True,
        "payments": len(joined),
        "mean_abs_diff": _round(diff.mean(), 6),
        "p99_abs_diff": _round(diff.quantile(0.99), 6),
        "max_abs_diff": _round(diff.max(), 6),
        "within_0_01": _round((diff <= 0.01).mean(), 4),
        "pearson": _round(joined["online"].corr(joined["offline"]), 6),
    }


def _round(value: Any, digits: int = 4) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(value, digits)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    window = report["window"]
    table = Table(title=f"replay {window['from']} .. {window['to']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    lat = report["latency_ms"]
    rows = [
        ("payments", f"{report['payments']:,}"),
        ("payments/s", f"{report['payments_per_s']}"),
        ("latency p50 / p95 / p99 (ms)", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ("decisions", ", ".join(f"{k} {v:,}" for k, v in report["decisions"].items())),
        (
            "frauds caught",
            f"{report['frauds_caught']} of {report['frauds']} "
            f"({report['frauds_caught_amount']:,.2f} of "
            f"{report['fraud_amount']:,.2f} EUR); blocked {report['frauds_blocked']}",
        ),
        ("false declines", f"{report['false_declines']:,}"),
        ("authorization rate", f"{report['authorization_rate']:.2%}"),
        ("average precision", f"{report['average_precision']}"),
        ("card precision@100", f"{report['card_precision_at_100']}"),
        # Labels fall due 7 days after a payment: the week before the window's
        # come in during it, the window's last week's after it.
        ("labels sent (due in the window)", f"{report['labels_sent']:,}"),
        ("model", ", ".join(report["model_versions"])),
        ("actuation mode", ", ".join(report["actuation_modes"])),
    ]
    agree = report["agreement"]
    if agree.get("available"):
        rows.append(
            (
                "agreement with backtest scores",
                f"mean |diff| {agree['mean_abs_diff']}, max {agree['max_abs_diff']}, "
                f"{agree['within_0_01']:.1%} within 0.01 ({agree['payments']:,})",
            )
        )
    else:
        rows.append(("agreement with backtest scores", "not computed"))
    for figure, value in rows:
        table.add_row(figure, value)
    Console().print(table)


def write_report(report: dict[str, Any], result: Any, out: Path) -> Path:
    """report.json and report.html (plots as embedded PNGs) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = _plots(result.frame)
    (out / "report.html").write_text(_html(report, plots))
    return out


def _plots(frame: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    pngs = {}

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(frame["latency_ms"], bins=60, color="#4472c4")
    ax.set_xlabel("latency per request (ms)")
    ax.set_ylabel("payments")
    ax.set_title("Latency")
    pngs["latency histogram"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    for label, name, color in ((0, "genuine", "#70ad47"), (1, "fraud", "#c00000")):
        scores = frame.loc[frame["tx_fraud"] == label, "score"]
        ax.hist(scores, bins=bins, density=True, alpha=0.6, label=name, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title("Score distribution by label")
    ax.legend()
    pngs["score distribution by label"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if frame["tx_fraud"].nunique() == 2:
        precision, recall, _ = precision_recall_curve(frame["tx_fraud"], frame["score"])
        ax.plot(recall, precision, color="#4472c4")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall of the live scores")
    pngs["precision-recall curve"] = _png(fig)
    plt.close("all")
    return pngs


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html(report: dict[str, Any], plots: dict[str, str]) -> str:
    def rows(d: dict, prefix: str = "") -> str:
        out = []
        for key, value in d.items():
            if isinstance(value, dict):
                out.append(rows(value, f"{prefix}{key}."))
            else:
                out.append(
                    f"<tr><th>{html.escape(prefix + key)}</th>"
                    f"<td>{html.escape(str(value))}</td></tr>"
                )
        return "".join(out)

    images = "".join(
        f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in plots.items()
    )
    window = report["window"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fraudmesh replay {window['from']} .. {window['to']}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3em 1em; text-align: left; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
</style></head><body>
<h1>fraudmesh replay {window['from']} .. {window['to']}</h1>
<table>{rows(report)}</table>
{images}
</body></html>
"""
