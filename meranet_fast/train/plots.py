"""PNG plots of a run (matplotlib, Agg backend): learning curves and the confusion matrix."""
from __future__ import annotations

import numpy as np

from meranet_fast._optional import pyplot

__all__ = ["NO_PLOTS", "plot_curves", "plot_confusion"]

#: What a run without matplotlib says instead of writing its PNGs.
NO_PLOTS = "matplotlib is not installed: no PNG plots (metrics.csv and result.json hold the numbers)"


def plot_curves(history: list[dict], path: str, title: str = "") -> str:
    """Loss (train/val) and accuracy (train/val, val UF1) per epoch, from the run's history rows."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax_acc.plot(epochs, [h["val_uf1"] for h in history], "--", label="validation UF1")
    ax_acc.set(xlabel="epoch", ylabel="score", title="accuracy", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classes: tuple[str, ...], path: str, title: str = "") -> str:
    """Confusion matrix with counts and row-normalised shading (rows: true class, columns: predicted)."""
    plt = pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
