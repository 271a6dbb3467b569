"""A tiny causal language model and tokenizer, built in-process (no download, no Ray)."""

from __future__ import annotations

import functools
from typing import Any

from app.generation.engine import TextGenerator

CORPUS = ["the registry decides which version serves", "a canary rolls out step by step"]
CONTEXT = 64


@functools.cache
def tiny_model() -> tuple[Any, Any]:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    end = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=[end], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=end, model_max_length=CONTEXT
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval(), tokenizer


def tiny_generator() -> TextGenerator:
    """A generator over the tiny model, with its own token count."""
    model, tokenizer = tiny_model()
    return TextGenerator(model, tokenizer, CONTEXT)
