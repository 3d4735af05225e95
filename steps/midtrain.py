"""midtrain: the parent checkpoint + QA train + KB + params.midtrain -> a checkpoint (paths: dvc.yaml).
What it trains on: nanochat_core.stages.midtrain_conversations."""
from nanochat_core import stages
from steps.common import finetune_step

load, run, save = finetune_step("midtrain", stages.midtrain_conversations)
