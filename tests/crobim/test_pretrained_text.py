"""Verified text-encoder loads (issue 24, MODEL.md §8): a local bert-base-uncased folder in the hub's layout
(BertForPreTraining: ``bert.`` prefix, ``LayerNorm.gamma/beta``, pooler, MLM and NSP heads) or as plain BertModel
keys loads, and the keys it leaves out or adds are reported. Random values; the load test uses the real bert-base
sizes (building it takes a few seconds here), the error tests the same key layout at hidden size 32."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from crobim.config import TextConfig, WeightsConfig
from crobim.errors import CheckpointError
from crobim.pretrained import build_text_encoder

BERT_BASE = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 512,
}  # fmt: skip
TINY_BERT = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def bert_folder(path: Path, *, layout: str, **sizes) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Hugging Face folder with random weights in bert-base-uncased's layouts.

    ``layout="pretraining"``: ``model.safetensors`` of the hub's bert-base-uncased (BertForPreTraining: ``bert.``
    prefix, ``LayerNorm.gamma/beta``, pooler, ``cls.predictions`` and ``cls.seq_relationship``); ``"bertmodel"``:
    unprefixed BertModel keys with its pooler. Returns the folder and the BertModel-named tensors written.
    """
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(**sizes)
    model = BertForPreTraining(config)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    plain = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    if layout == "pretraining":
        state.pop(
            "cls.predictions.decoder.weight", None
        )  # tied to the word embeddings; the hub file omits it
        state.pop("cls.predictions.decoder.bias", None)
        written = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", k): v for k, v in state.items()}
        written = {re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k): v for k, v in written.items()}
    else:
        written = plain
    path.mkdir(parents=True, exist_ok=True)
    config.architectures = ["BertForMaskedLM"] if layout == "pretraining" else ["BertModel"]
    config.save_pretrained(str(path))
    save_file(written, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path, plain


def load(folder: Path):
    return build_text_encoder(TextConfig(name_or_path=str(folder)), WeightsConfig())


@pytest.mark.parametrize("layout", ["pretraining", "bertmodel"])
def test_real_bert_base_layouts_load_and_are_verified(tmp_path, layout):
    folder, plain = bert_folder(tmp_path / "bert-base-uncased", layout=layout, **BERT_BASE)
    encoder = load(folder)
    assert encoder.pooler is None
    loaded = encoder.state_dict()
    assert len(loaded) == 197
    for key, value in loaded.items():
        assert torch.equal(value, plain[key]), key


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    save_file(edit(load_file(str(path))), str(path), metadata={"format": "pt"})


def test_wrong_prefix_is_named(tmp_path):
    folder, _ = bert_folder(tmp_path / "bert", layout="bertmodel", **TINY_BERT)
    _rewrite(folder, lambda state: {f"module.{k}": v for k, v in state.items()})
    with pytest.raises(
        CheckpointError, match=r"missing keys .*unexpected keys \['module\..*prefix 'module\.'"
    ):
        load(folder)


@pytest.mark.parametrize("layout", ["pretraining", "bertmodel"])
def test_missing_layer_is_named(tmp_path, layout):
    folder, _ = bert_folder(tmp_path / "bert", layout=layout, **TINY_BERT)
    _rewrite(
        folder, lambda state: {k: v for k, v in state.items() if not re.search(r"encoder\.layer\.1\.", k)}
    )
    with pytest.raises(
        CheckpointError, match=r"16 missing keys \['encoder.layer.1.*and 11 more.*bert-base-uncased"
    ):
        load(folder)


def test_unexpected_key_is_named(tmp_path):
    folder, _ = bert_folder(tmp_path / "bert", layout="pretraining", **TINY_BERT)
    _rewrite(folder, lambda state: {**state, "bert.encoder.adapter.weight": torch.zeros(2)})
    with pytest.raises(
        CheckpointError, match=r"1 unexpected keys \['bert.encoder.adapter.weight'\].*Fix: point"
    ):
        load(folder)


def test_truncated_file_is_named(tmp_path):
    folder, _ = bert_folder(tmp_path / "bert", layout="pretraining", **TINY_BERT)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors \(text.name_or_path\) is .*(truncated|copy)"
    ):
        load(folder)


def test_pickled_weights_are_never_loaded(tmp_path):
    folder, plain = bert_folder(tmp_path / "bert", layout="bertmodel", **TINY_BERT)
    torch.save(plain, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"never unpickled"):
        load(folder)
