"""midtrain: checkpoints/base + data/qa + data/kb + params.midtrain -> checkpoints/mid."""
from pathlib import Path

from nanochat_core import stages
from steps.common import save_training

QA, KB, PARENT, OUT = Path("data/qa"), Path("data/kb"), Path("checkpoints/base"), Path("checkpoints/mid")


def load(params):
    return {"qa": QA, "kb": KB, "parent": PARENT}


def run(inputs, params, log):
    return stages.midtrain(params, inputs["qa"], inputs["kb"], inputs["parent"], OUT, log)


def save(result, params):
    return save_training("midtrain", result, OUT, {"qa": QA, "kb": KB, "parent": PARENT}, ["pretrain", "build_kb", "prepare_documents"])
