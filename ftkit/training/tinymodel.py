"""A tiny random-initialised Llama model and its tokenizer, saved with ``save_pretrained``.

No model hub is reachable from CI or a laptop on a plane: the demo and the tests train this
model through the same ``from_pretrained`` paths a real base model takes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.render import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Text to learn a small byte-level BPE vocabulary from: the bundled example data."""
    path = Path(__file__).parents[1] / "examples" / "example_data.jsonl"
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for message in json.loads(line)["messages"]:
            texts.append(message["content"])
    return texts


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (any UTF-8 text encodes) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    dest: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> Path:
    """Save a tiny Llama model + tokenizer under ``dest`` and return the folder.

    With the usual initializer_range (0.02) a 64-wide model's output layer can only make logits
    of about 1, so LoRA (which leaves that layer frozen) can teach it the right answers but not
    confidence in them: its loss stays near ln(vocabulary). The demo builds it with larger weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()
