"""The network. Editable: proposals may change the architecture.

A small BERT-style encoder built from a `transformers` config (no download, no pretrained
weights: the hub is not assumed), reading byte-level token ids. Inputs are int64 [N, L]: UTF-8
bytes + 1, 0 = padding (the trusted loader's encoding). A [CLS] id (257) is prepended here.
"""
import torch
import torch.nn as nn

CLS_ID, VOCAB = 257, 258


class ByteBert(nn.Module):
    def __init__(self, max_length: int, num_classes: int):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=256, max_position_embeddings=max_length + 1, num_labels=num_classes,
                            pad_token_id=0, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        self.bert = BertForSequenceClassification(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(1)
        keep = max(1, int(lengths.max()))  # drop all-padding columns: shorter sequences, same result
        ids = torch.cat([torch.full_like(ids[:, :1], CLS_ID), ids[:, :keep]], dim=1)
        return self.bert(input_ids=ids, attention_mask=(ids != 0).long()).logits


def build_model(input_shape: tuple, num_classes: int) -> nn.Module:
    """input_shape is (max_length,) of the token-id rows."""
    return ByteBert(int(input_shape[0]), num_classes)
