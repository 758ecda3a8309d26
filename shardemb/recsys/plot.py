"""The demo's plot (``training.png``): loss and recall@10 per epoch. Needs matplotlib
(``pip install 'shardemb[demo]'``), imported only when a plot is drawn."""

from __future__ import annotations

__all__ = ["plot_history"]


def plot_history(history: list, baseline: dict, keras_result: dict | None, path: str) -> None:
    """Loss and recall@10 per epoch (and the Keras comparison's, and the most-popular
    baseline's recall) to ``path``; without matplotlib, a line says so instead."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot at {path}: it needs matplotlib (pip install 'shardemb[demo]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", label="ShardedEmbedding")
    ax2.plot(epochs, [h["recall@10"] for h in history], "o-", label="ShardedEmbedding")
    if keras_result:
        kh = keras_result["history"]
        ax1.plot(
            [h["epoch"] for h in kh], [h["loss"] for h in kh], "s--", label="keras.layers.Embedding"
        )
        ax2.plot(
            [h["epoch"] for h in kh],
            [h["recall@10"] for h in kh],
            "s--",
            label="keras.layers.Embedding",
        )
    ax2.axhline(baseline["recall@10"], color="gray", linestyle=":", label="most popular")
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax2.set(xlabel="epoch", ylabel="recall@10", title="Recall@10 (held-out, full catalogue)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
