"""rag_finetune: the parent checkpoint + QA train + KB + params.rag_finetune -> a checkpoint (paths: dvc.yaml).
What it trains on: nanochat_core.stages.rag_conversations."""
from nanochat_core import stages
from steps.common import finetune_step

load, run, save = finetune_step("rag_finetune", stages.rag_conversations)
