"""The demo's report: what happened, as Markdown and three plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Record:
    """Everything the demo measured, filled in step by step."""

    steps: list[tuple[str, float, bool, str]] = field(default_factory=list)  # name, s, ok, note
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> summary
    throughput: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (s, docs)
    latencies_ms: list[float] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (title, preformatted text)


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plots(record: Record, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, (loss_axis, hr_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for ref, summary in record.training.items():
        epochs = [e["epoch"] for e in summary["epochs"]]
        loss_axis.plot(epochs, [e["loss"] for e in summary["epochs"]], marker="o", label=ref)
        line = hr_axis.plot(epochs, [e["hr@100"] for e in summary["epochs"]], marker="o",
                            label=f"{ref} HR@100")[0]
        hr_axis.axhline(summary["most_popular"]["hr@100"], linestyle="--",
                        color=line.get_color(), alpha=0.5)
    loss_axis.set(title="training loss", xlabel="epoch", ylabel="loss")
    hr_axis.set(title="held-out HR@100 (dashed: most popular)", xlabel="epoch", ylim=(0, 1))
    for axis in (loss_axis, hr_axis):
        axis.legend()
    paths.append(_save(figure, directory / "training.png"))

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, samples in record.throughput.items():
        if len(samples) > 1:
            times, counts = np.asarray(samples).T
            rates = np.diff(counts) / np.maximum(np.diff(times), 1e-6)
            axis.plot(times[1:], rates, marker=".", label=label)
    axis.set(title="indexing throughput", xlabel="seconds into the phase",
             ylabel="documents / s")
    axis.legend()
    paths.append(_save(figure, directory / "indexing.png"))

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(record.latencies_ms, bins=40)
    for q in (50, 99):
        value = float(np.percentile(record.latencies_ms, q)) if record.latencies_ms else 0.0
        axis.axvline(value, linestyle="--", color="black", alpha=0.6)
        axis.annotate(f"p{q} {value:.1f} ms", (value, 0), rotation=90, va="bottom")
    axis.set(title="recall latency (full request, in-process)", xlabel="ms", ylabel="requests")
    paths.append(_save(figure, directory / "recall_latency.png"))
    return paths


def _cell(text: str) -> str:
    """Text as one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def write(record: Record, directory: Path) -> Path:
    """report.md next to the plots; returns the Markdown file."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = _plots(record, directory)
    lines = ["# esrec demo report", "", "| step | seconds | check |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {seconds:.1f} | {'ok' if ok else 'FAILED'}: {_cell(note)} |"
              for name, seconds, ok, note in record.steps]
    lines += ["", "## Models", ""]
    for ref, summary in record.training.items():
        lift = summary["lift"].get("hr@100")
        lines.append(f"- {ref}: HR@100 {summary['model']['hr@100']:.3f} vs most popular "
                     f"{summary['most_popular']['hr@100']:.3f} (lift "
                     f"{f'{lift:.2f}x' if lift else 'n/a'})")
    if record.latencies_ms:
        ms = np.asarray(record.latencies_ms)
        lines += ["", f"Recall latency over {len(ms)} requests: p50 "
                  f"{np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms."]
    for title, text in record.tables:
        lines += ["", f"## {title}", "", "```", text.rstrip(), "```"]
    lines += ["", *[f"![{path.stem}]({path.name})" for path in plots], ""]
    report = directory / "report.md"
    report.write_text("\n".join(lines))
    return report
