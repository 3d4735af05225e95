"""rag_finetune: checkpoints/mid + data/qa + data/kb + params.rag_finetune -> checkpoints/rag."""
from pathlib import Path

from nanochat_core import stages
from steps.common import save_training

QA, KB, PARENT, OUT = Path("data/qa"), Path("data/kb"), Path("checkpoints/mid"), Path("checkpoints/rag")


def load(params):
    return {"qa": QA, "kb": KB, "parent": PARENT}


def run(inputs, params, log):
    return stages.rag_finetune(params, inputs["qa"], inputs["kb"], inputs["parent"], OUT, log)


def save(result, params):
    return save_training("rag_finetune", result, OUT, {"qa": QA, "kb": KB, "parent": PARENT}, ["midtrain", "build_kb", "prepare_documents"])
