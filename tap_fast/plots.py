"""PNG figures: training curves and the paper's Figure 2 (alignment P and cosine S of a pair)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tap_fast.atomic_write import write_atomic  # noqa: E402
from tap_fast.evaluate import TEST_SEED_OFFSET  # noqa: E402


def _save(fig, path: Path) -> Path:
    """The figure as a PNG, written atomically (as every file of a run)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, lambda f: f.write(buffer.getvalue()))


def training_loss_curve(records: list[dict]) -> tuple[list[int], list[float], list[float]]:
    """(episodes, loss, smoothed loss) from log.jsonl's "train" records. The smoothing is a debiased
    exponential average over about 1/20 of the records (none for 20 or fewer): one record is the
    mean loss of --log-every steps, still noisy for few-shot episodes."""
    episodes = [r["episode"] for r in records]
    losses = [r["loss"] for r in records]
    decay = 1 - min(1.0, 20 / len(records)) if records else 0.0
    smoothed, average = [], 0.0
    for n, loss in enumerate(losses, 1):
        average = decay * average + (1 - decay) * loss
        smoothed.append(average / (1 - decay ** n))
    return episodes, losses, smoothed


def plot_training_curves(history: list[dict], path: Path, train_records: list[dict] | None = None) -> Path:
    """Training loss (from the log's train records when given, else at the validation points) and
    meta-validation accuracy with its 95% CI."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    episodes = [h["episode"] for h in history]
    if train_records:
        steps, losses, smoothed = training_loss_curve(train_records)
        if smoothed == losses:  # too few records to smooth; markers: a single point draws no line
            loss_ax.plot(steps, losses, marker="o")
        else:
            loss_ax.plot(steps, losses, alpha=0.35, linewidth=0.8, label="mean over --log-every steps")
            loss_ax.plot(steps, smoothed, label="smoothed")
            loss_ax.legend(fontsize=8)
    else:  # no log (e.g. a caller without one): the smoothed loss at each validation
        loss_ax.plot(episodes, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(xlabel="training episode", ylabel="training loss", title="loss")
    acc = [h["val_accuracy"] for h in history]
    ci = [h["val_ci95"] for h in history]
    acc_ax.errorbar(episodes, acc, yerr=ci, marker="o", capsize=3)
    acc_ax.set(xlabel="training episode", ylabel="accuracy (%)", title="meta-validation")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def plot_alignment_example(model, config, index, device, path: Path, split: str = "test") -> Path:
    """For one test query: P, S and P*S against a support of its class and of the closest other
    class (the one the model scores highest: on the synthetic set usually a same-looking rival)."""
    from tap_fast.data.build import episode_dataset

    dataset = episode_dataset(config, index, split, shot=1, train=False, seed=config.seed + TEST_SEED_OFFSET)
    batch = dataset[0]
    model.eval()
    query = batch["query"][:1].to(device)
    label = int(batch["query_labels"][0])
    logits = model(batch["support"].to(device), query, len(batch["class_names"]))[0].float().cpu()
    logits[label] = -float("inf")
    other = int(logits.argmax())
    support = batch["support"][[label, other]].to(device)  # shot 1: support[c] is class c
    P, S = model.alignment_maps(support, query)
    S = S[0].float().cpu()
    P = None if P is None else P[0].float().cpu()

    p_name = "P (soft-DTW alignment)" if config.head == "otam" else "P (alignment)"
    rows = [("S (cosine)", S)] if P is None else [(p_name, P), ("S (cosine)", S), ("P * S", P * S)]
    titles = [f"same class:\n{batch['class_names'][label]}", f"closest other class:\n{batch['class_names'][other]}"]
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 3.4 * len(rows)), squeeze=False)
    for r, (name, maps) in enumerate(rows):
        # each row on its own (shared) colour range: trained maps often vary within a narrow band
        # that the full [0, 1] or [-1, 1] range would hide
        lo, hi = float(maps.min()), float(maps.max()) + 1e-6
        for c in range(2):
            ax = axes[r][c]
            image = ax.imshow(maps[c].numpy(), cmap="viridis", vmin=lo, vmax=hi)
            ax.set_xlabel("support frame j")
            ax.set_ylabel("query frame i")
            ax.set_title(f"{name}, {titles[c]}" if r == 0 else name, fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"{config.head} head: a test query of class {batch['class_names'][label]}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
