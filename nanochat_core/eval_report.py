"""The evaluate stage's report: Table 1 (report.md), the EM-by-type and held-out hallucination
plots and the long table. Only the evaluate stage depends on this file, so editing the report
retrains nothing; the CSV/PNG writers are report.py's. CSV files feed `dvc plots`; PNGs are for
looking at."""
from pathlib import Path

from nanochat_core.common import atomic_write_text
from nanochat_core.report import _save_png, write_csv


def eval_rows(results):
    return [{"checkpoint": ck, "mode": mode, "type": t, "series": f"{ck}/{mode}", **m}
            for ck, modes in results.items() for mode, types in modes.items() for t, m in types.items()]


MODES = ("closed_book", "rag", "refrag")
# Table 1's order: held-out people's questions by hops, then the ones that test something else.
TYPES = ("single", "2hop", "3hop", "unanswerable", "counterfactual", "known_single")


def eval_plot(results, csv_path, png_path, table_path=None):
    """csv_path: one row per question type, EM of the final checkpoint in each mode (what
    `dvc plots show` draws); table_path: every checkpoint x mode x type, long format."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = eval_rows(results)
    if table_path:
        write_csv(table_path, rows, ["checkpoint", "mode", "type", "n", "em", "em_lo", "em_hi", "f1", "hallucinated",
                                     "unsupported", "abstained", "abstention_correct", "citation_precision",
                                     "citation_precision_n", "citation_recall", "citation_recall_n", "mean_hops",
                                     "latency_s", "retrieval_recall"])
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


def hallucination_plot(rates, csv_path, png_path):
    """rates: {checkpoint: {mode: hallucination rate on the held-out questions, or None}}.
    csv_path: one row per checkpoint, one column per mode (the `dvc plots` source)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    write_csv(csv_path, [{"checkpoint": ck, **modes} for ck, modes in rates.items()], ["checkpoint", *MODES])
    cks = list(rates)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cks) + 2), 4))
    width = 0.8 / len(MODES)
    for i, m in enumerate(MODES):
        ax.bar([x + i * width for x in range(len(cks))], [rates[ck].get(m) or 0 for ck in cks], width, label=m,
               color=plt.cm.tab10(i))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cks))], cks)
    ax.set_ylabel("hallucination rate")
    ax.set_ylim(0, 1)
    ax.set_title("Hallucination (neither correct nor an abstention), held-out-entity questions")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, png_path)
    plt.close(fig)


def _fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}"


def headline_sentence(results, headline, heldout):
    """Table 1's one-sentence summary: RAG's hallucination rate against closed-book's, for the
    rag checkpoint on the held-out questions (`heldout`, the pooled types)."""
    ratio = headline.get("rag_over_closed_book_hallucination_heldout")
    n = {m: sum(results.get("rag", {}).get(m, {}).get(t, {}).get("n", 0) for t in heldout) for m in ("rag", "closed_book")}
    rates = (f"RAG {_fmt(headline.get('rag_hallucination_heldout'))} (n={n['rag']}) against closed-book "
             f"{_fmt(headline.get('closed_book_hallucination_heldout'))} (n={n['closed_book']})")
    verdict = ("the ratio is undefined (a rate is missing or closed-book's is 0)" if ratio is None else
               f"RAG hallucinates {ratio:.2f}× as often as closed-book "
               f"({abs(1 - ratio):.0%} {'less' if ratio <= 1 else 'more'})")
    return (f"**Hallucination** (an answer that is neither correct nor an abstention), checkpoint `rag`, "
            f"held-out-entity questions ({', '.join(heldout)}): {rates}; {verdict}.")


def markdown_report(results, headline, path, heldout, final_doc=None, by_relation=None):
    """The evaluation report: the headline sentence, the headline numbers, then Table 1, one table
    per question type with a row per checkpoint x mode, then (final_doc: evaluate's
    {ckpt: {type: where_final_doc}}) where REFRAG's multi-hop answers fail, then (by_relation:
    evaluate's {ckpt: {mode: {type: em_by_relation}}}) EM per relation chain. `heldout`: the
    question types the headline's hallucination rates pool."""
    lines = ["# Evaluation", "", headline_sentence(results, headline, heldout), "",
             "Headline (test questions; EM = exact match):", ""]
    lines += [f"- {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in headline.items()]
    lines += ["", "## Table 1", "",
              "- EM: exact match (SQuAD normalization) with its 95% Wilson interval; F1: SQuAD token F1.",
              "- hallucinated: neither an abstention nor correct, in every mode (closed-book included); "
              "unsupported: the model's answer was not an abstention and in no shown document (every closed-book "
              "answer is); in RAG and REFRAG modes such an answer is replaced by the abstention before it is scored "
              "(inference.ground), so it counts as abstained, never as hallucinated.",
              "- abstained: the share of abstentions; abstention acc.: abstained exactly when the gold answer "
              "is the abstention.",
              "- citation P: the share of [n] citations naming a gold document of the last hop (an [n] past the "
              "block's end is wrong); citation R: of those gold documents shown in the final block, the share "
              "cited; (n) is how many answers each is defined for.",
              "- hops: documents blocks seen per answer; s/answer: wall-clock time of the group's answering "
              "(batched, per answer); retrieval recall: every hop's gold documents shown in any block."]
    for t in ordered_types({t for modes in results.values() for m in modes.values() for t in m}):
        lines += ["", f"### {t}", "",
                  "| checkpoint | mode | n | EM [95% CI] | F1 | hallucinated | unsupported | abstained | "
                  "abstention acc. | citation P (n) | citation R (n) | hops | s/answer (batched) | retrieval recall |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for ck, modes in results.items():
            for mode, by_type in modes.items():
                if t not in by_type:
                    continue
                r = by_type[t]
                em = _fmt(r.get("em"))
                if r.get("em_lo") is not None:
                    em += f" [{r['em_lo']:.2f}, {r['em_hi']:.2f}]"
                cites = [f"{_fmt(r.get(k))} ({r.get(k + '_n', 0)})" for k in ("citation_precision", "citation_recall")]
                lines.append(f"| {ck} | {mode} | {r['n']} | {em} | {_fmt(r.get('f1'))} | {_fmt(r.get('hallucinated'))} | "
                             f"{_fmt(r.get('unsupported'))} | {_fmt(r.get('abstained'))} | "
                             f"{_fmt(r.get('abstention_correct'))} | {cites[0]} | {cites[1]} | "
                             f"{_fmt(r.get('mean_hops'), 2)} | {_fmt(r.get('latency_s'), 3)} | "
                             f"{_fmt(r.get('retrieval_recall'))} |")
    if final_doc:
        lines += final_doc_table(final_doc)
    if by_relation:
        lines += relation_table(by_relation)
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def final_doc_table(final_doc):
    """The failure table's lines: each checkpoint's REFRAG multi-hop answers by where the final hop's gold
    document was shown (evaluation.where_final_doc), n, EM and the share that searched every bridge's name."""
    from nanochat_core.evaluation import FINAL_DOC
    lines = ["", "## Where REFRAG's multi-hop answers fail", "",
             "Test questions by where the final hop's gold document was shown (a document is never shown "
             "twice, so one already in hop 1's block must be read back past the later blocks); n and EM of each "
             "group, and \"named\": the share whose follow-up searches named every bridge entity (low: the search "
             "failed; high with a low EM: the reading did); \"no follow-up\": the share of never-shown ones that "
             "searched no further.", "",
             "| checkpoint | type | " + " | ".join(f"{v}: n, EM, named" for v in FINAL_DOC.values()) + " | no follow-up |",
             "|---|---|" + "---|" * (len(FINAL_DOC) + 1)]
    for ck, by_type in final_doc.items():
        for t, cats in by_type.items():
            cells = [f"{cats[c]['n']}, {_fmt(cats[c]['em'])}, {_fmt(cats[c].get('named'))}" for c in FINAL_DOC]
            lines.append(f"| {ck} | {t} | " + " | ".join(cells) + f" | {_fmt(cats['never']['no_search'])} |")
    return lines


def relation_table(by_relation):
    """EM per (type, relation chain), one column per checkpoint x mode that reads documents
    (closed-book answers about held-out people are wrong by construction)."""
    cols = [(ck, mode) for ck, modes in by_relation.items() for mode in modes if mode != "closed_book"]
    rows = {}
    for ck, mode in cols:
        for t, rels in by_relation[ck][mode].items():
            for rel, r in rels.items():
                rows.setdefault((t, rel), {})[(ck, mode)] = r
    lines = ["", "## EM by relation chain", "",
             "Each question type split by what its questions ask (n questions per row): a chain that fails "
             "everywhere is hidden in its type's mean.", "",
             "| type | relation | n | " + " | ".join(f"{ck} {mode}" for ck, mode in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    order = ordered_types({t for t, _ in rows})
    for (t, rel), cells in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        n = next(iter(cells.values()))["n"]
        lines.append(f"| {t} | {rel} | {n} | " + " | ".join(_fmt(cells[c]["em"]) if c in cells else "" for c in cols)
                     + " |")
    return lines


def ordered_types(found):
    """The question types in `found`, Table 1's order first, then any others alphabetically."""
    return [t for t in TYPES if t in found] + sorted(set(found) - set(TYPES))
