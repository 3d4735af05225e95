"""pretrain: data/corpus + params.{tokenizer,model,pretrain} -> checkpoints/tokenizer,
checkpoints/base (step checkpoints; a killed run resumes from the last one)."""
from pathlib import Path

from nanochat_core import stages
from steps.common import save_training

CORPUS, OUT = Path("data/corpus"), Path("checkpoints/base")


def load(params):
    stages.read_corpus(CORPUS)  # fail early, naming the missing input
    return {"corpus": CORPUS}


def run(inputs, params, log):
    return stages.pretrain(params, inputs["corpus"], OUT, log)


def save(result, params):
    return save_training("pretrain", result, OUT, {"corpus": CORPUS}, ["prepare_documents"],
                         extra_outputs={"tokenizer": stages.TOKENIZER_PATH})
