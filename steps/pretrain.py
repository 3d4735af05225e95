"""pretrain: the corpus + params.{tokenizer,model,pretrain} -> the tokenizer and the base
checkpoint (step checkpoints; a killed run resumes from the last one). Paths: dvc.yaml."""
from nanochat_core import stages
from steps.common import save_training


def load(params, paths):
    stages.read_corpus(paths["corpus"])  # fail early, naming the missing input
    return {}


def run(inputs, params, paths, log, ctx):
    return stages.pretrain(params, paths["corpus"], paths["out"], paths["tokenizer"], run=ctx, log=log)


def save(result, params, paths):
    return save_training("pretrain", result, paths)
