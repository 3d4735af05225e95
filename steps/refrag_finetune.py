"""refrag_finetune: the parent checkpoint + QA train + KB + params.refrag_finetune -> a checkpoint (paths: dvc.yaml).
What it trains on: nanochat_core.stages.refrag_conversations."""
from nanochat_core import stages
from steps.common import finetune_step

load, run, save = finetune_step("refrag_finetune", stages.refrag_conversations)
