"""Plots for people from the training stages: loss curves, REFRAG's RL rewards, and the CSV/PNG
writers they share with eval_report.py. Every training stage depends on this file, so the
evaluation report lives in eval_report.py, which only the evaluate stage depends on. CSV files
feed `dvc plots`; PNGs are for looking at."""
import csv
import io

from nanochat_core.common import atomic_write_bytes, atomic_write_text


def write_csv(path, rows, fields):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save_png(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def loss_plot(history, stage, csv_path, png_path):
    """history: [{"step", "loss", ...}] from train(). Resumed runs only have the steps they ran."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    write_csv(csv_path, history, ["step", "loss"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{stage}: training loss")
    ax.grid(alpha=0.3)
    _save_png(fig, png_path)
    plt.close(fig)


def rl_plot(history, csv_path, png_path):
    """REFRAG's RL phase: mean reward per step and val EM (the checkpoint selector) at each
    evaluation, against step. history: rl.train_rl's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    write_csv(csv_path, history, ["step", "reward", "reward_em", "val_em", "val_em_2hop"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [h for h in history if "reward" in h]
    ax.plot([h["step"] for h in tr], [h["reward"] for h in tr], lw=1, label="reward (train rollouts)")
    ev = [h for h in history if "val_em" in h]
    ax.plot([h["step"] for h in ev], [h["val_em"] for h in ev], "o-", label="val REFRAG EM")
    ev2 = [h for h in ev if "val_em_2hop" in h]
    if ev2:
        ax.plot([h["step"] for h in ev2], [h["val_em_2hop"] for h in ev2], "s--", label="val REFRAG EM, 2-hop")
    ax.set_xlabel("RL step")
    ax.legend()
    ax.set_title("refrag_finetune: RL")
    ax.grid(alpha=0.3)
    _save_png(fig, png_path)
    plt.close(fig)
