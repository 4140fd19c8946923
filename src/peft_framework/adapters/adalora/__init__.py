"""AdaLoRA (Zhang et al. 2023): SVD-form low-rank updates whose ranks are pruned during training by
importance, with checkpoints in HuggingFace peft's format (peft_type ADALORA).

    method = AdaLoraMethod()
    method.inject(model, AdaLoraConfig(init_r=12, target_r=4, target_modules=["q_proj", "v_proj"]))
    # training: the Trainer gets method.training_callbacks(...) (rank allocator) and adds
    # method.extra_loss(model) (orthogonal regulariser) to the loss; peft users call these by hand.
"""

from peft_framework.adapters.adalora.config import AdaLoraConfig
from peft_framework.adapters.adalora.layer import SVDLinear
from peft_framework.adapters.adalora.method import AdaLoraMethod

__all__ = ["AdaLoraConfig", "AdaLoraMethod", "SVDLinear"]
