"""What a training run leaves next to its artifact: metrics.json and a plot per epoch."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from towers.evaluate import comparison
from towers.train import TrainConfig, TrainResult


def training_summary(result: TrainResult, config: TrainConfig) -> dict[str, Any]:
    """The training section of the manifest and of metrics.json."""
    return {
        "config": asdict(config),
        "examples": len(result.split.train),
        "eval_cases": len(result.split.cases),
        "validation_cases": len(result.split.validation),
        "best_epoch": result.best_epoch,
        "examples_per_second": round(result.examples_per_second, 1),
        "epochs": [{"epoch": e.epoch, "loss": round(e.loss, 5), "seconds": round(e.seconds, 2),
                    **{k: round(v, 5) for k, v in e.metrics.items()},
                    **{f"validation_{k}": round(v, 5) for k, v in e.validation.items()}}
                   for e in result.history],
        **comparison(result.metrics, result.baseline),
    }


def write_report(summary: dict[str, Any], directory: Path, title: str) -> list[Path]:
    """metrics.json and training.png (loss and HR@K per epoch, baseline dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    metrics = directory / "metrics.json"
    metrics.write_text(json.dumps(summary, indent=2, default=str))
    epochs = [e["epoch"] for e in summary["epochs"]]
    figure, (loss_axis, hr_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [e["loss"] for e in summary["epochs"]], marker="o")
    loss_axis.set(title="training loss (in-batch softmax, logQ)", xlabel="epoch", ylabel="loss")
    for k in summary["config"]["k_values"]:
        line = hr_axis.plot(epochs, [e[f"hr@{k}"] for e in summary["epochs"]], marker="o",
                            label=f"HR@{k}")[0]
        hr_axis.axhline(summary["most_popular"][f"hr@{k}"], linestyle="--",
                        color=line.get_color(), alpha=0.6)
    hr_axis.set(title="held-out HR@K (dashed: most popular)", xlabel="epoch", ylabel="HR@K",
                ylim=(0, 1))
    hr_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    plot = directory / "training.png"
    figure.savefig(plot, dpi=100)
    plt.close(figure)
    return [metrics, plot]
