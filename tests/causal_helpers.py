"""Tiny causal LMs for tests: a Llama and a GPT-2 built from configs, with a word-level tokenizer (no download).

Both are saved with ``save_pretrained`` so that tests load them through ``common.model.causal.load_causal_lm``.
Dropout is off so that a forward pass is a deterministic function of the weights and the batch.
"""

from __future__ import annotations

from pathlib import Path

#: The tokenizer's words: what the plain template renders, roles, and filler words w0..w79 for synthetic texts.
WORDS = (
    "###",
    ":",
    "Instruction",
    "Response",
    "System",
    "User",
    "Assistant",
    "yes",
    "no",
    "the",
    "answer",
    "is",
    *(f"w{i}" for i in range(80)),
)


def _save_tokenizer(directory: Path, specials: dict[str, str]) -> int:
    """A word-level tokenizer over WORDS plus ``specials`` (kind -> token), saved to ``directory``; its vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys([*specials.values(), *WORDS]))
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tokenizer.save_pretrained(directory)
    return len(vocab)


def build_tiny_llama(directory: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """A random 2-layer Llama (2 heads) with ``<s>``/``</s>``/``<pad>``/``<unk>``, saved to ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    vocab_size = _save_tokenizer(directory, specials)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attention_dropout=0.0,
    )
    torch.manual_seed(4321)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def build_tiny_gpt2(directory: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """A random 2-layer GPT-2 (2 heads) whose tokenizer, like GPT-2's, has ``<|endoftext|>`` and NO pad token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    specials = {"unk_token": "<|unk|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    vocab_size = _save_tokenizer(directory, specials)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(4321)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory
