"""refrag_finetune: checkpoints/rag + data/qa + data/kb + params.refrag_finetune -> checkpoints/refrag."""
from pathlib import Path

from nanochat_core import stages
from steps.common import save_training

QA, KB, PARENT, OUT = Path("data/qa"), Path("data/kb"), Path("checkpoints/rag"), Path("checkpoints/refrag")


def load(params):
    return {"qa": QA, "kb": KB, "parent": PARENT}


def run(inputs, params, log):
    return stages.refrag_finetune(params, inputs["qa"], inputs["kb"], inputs["parent"], OUT, log)


def save(result, params):
    return save_training("refrag_finetune", result, OUT, {"qa": QA, "kb": KB, "parent": PARENT}, ["rag_finetune", "build_kb", "prepare_documents"])
