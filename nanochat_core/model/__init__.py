from nanochat_core.model.cache import InferenceCache
from nanochat_core.model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "InferenceCache"]
