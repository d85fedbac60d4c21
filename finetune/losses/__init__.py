"""Training losses, one small module per term, each with shape comments and a unit test
(tests/test_losses.py). G's trainer (`mmrecall.finetune.g_train`) composes the sampled softmax, negatives,
masked-item and interest terms; dual-stream pretraining uses the contrastive ones."""

from mmrecall.finetune.losses.contrastive import InfoNCE, MaskedLMHead
from mmrecall.finetune.losses.interests import balance, best_interest, dense_all_action, disagreement
from mmrecall.finetune.losses.masked_item import masked_item_loss
from mmrecall.finetune.losses.negatives import hard_negative_logit, random_negative_logits
from mmrecall.finetune.losses.sampled_softmax import in_batch_logits, sampled_softmax

__all__ = [
    "InfoNCE",
    "MaskedLMHead",
    "balance",
    "best_interest",
    "dense_all_action",
    "disagreement",
    "hard_negative_logit",
    "in_batch_logits",
    "masked_item_loss",
    "random_negative_logits",
    "sampled_softmax",
]
