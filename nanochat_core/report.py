"""Plots and tables for people: loss curves per training stage, accuracy by question type.
CSV files feed `dvc plots`; PNGs are for looking at."""
import csv
import io
from pathlib import Path

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
    write_csv(csv_path, history, ["step", "reward", "reward_em", "val_em"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [h for h in history if "reward" in h]
    ax.plot([h["step"] for h in tr], [h["reward"] for h in tr], lw=1, label="reward (train rollouts)")
    ev = [h for h in history if "val_em" in h]
    ax.plot([h["step"] for h in ev], [h["val_em"] for h in ev], "o-", label="val REFRAG EM")
    ax.set_xlabel("RL step")
    ax.legend()
    ax.set_title("refrag_finetune: RL")
    ax.grid(alpha=0.3)
    _save_png(fig, png_path)
    plt.close(fig)


def eval_rows(results):
    return [{"checkpoint": ck, "mode": mode, "type": t, "series": f"{ck}/{mode}", **m}
            for ck, modes in results.items() for mode, types in modes.items() for t, m in types.items()]


MODES = ("closed_book", "rag", "refrag")


def eval_plot(results, csv_path, png_path, table_path=None):
    """csv_path: one row per question type, EM of the final checkpoint in each mode (what
    `dvc plots show` draws); table_path: every checkpoint x mode x type, long format."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = eval_rows(results)
    if table_path:
        write_csv(table_path, rows, ["checkpoint", "mode", "type", "n", "em", "f1", "abstained", "abstention_correct",
                                     "hallucinated", "retrieval_recall", "citation_precision"])
    final = list(results)[-1] if results else None
    wide = [{"type": t, **{m: results[final].get(m, {}).get(t, {}).get("em") for m in MODES}}
            for t in sorted({r["type"] for r in rows})]
    write_csv(csv_path, wide, ["type", *MODES])
    types = sorted({r["type"] for r in rows})
    series = sorted({r["series"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(types) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        ems = [next((r["em"] for r in rows if r["series"] == s and r["type"] == t), 0) or 0 for t in types]
        ax.bar([x + i * width for x in range(len(types))], ems, width, label=s, color=plt.cm.tab20(i % 20))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(types))], types, rotation=20)
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1)
    ax.set_title("Exact match by question type (checkpoint/mode)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, png_path)
    plt.close(fig)


def markdown_report(results, headline, path):
    lines = ["# Evaluation", "", "Headline (test questions; EM = exact match):", ""]
    lines += [f"- {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in headline.items()]
    lines += ["", "| checkpoint | mode | type | n | EM | F1 | abstained | hallucinated | retrieval recall |",
              "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for r in eval_rows(results):
        lines.append(f"| {r['checkpoint']} | {r['mode']} | {r['type']} | {r['n']} | {fmt(r['em'])} | {fmt(r['f1'])} | "
                     f"{fmt(r['abstained'])} | {fmt(r['hallucinated'])} | {fmt(r['retrieval_recall'])} |")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
