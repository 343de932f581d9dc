"""Class-name embeddings and token positions, from the world's own (frozen) text encoder.

The paper encodes each class in its own prompt, "a photograph of a {class}", and takes the text
encoder's hidden states at the class name's tokens, averaged over its sub-word tokens (CLIP's BPE
splits e.g. "pottedplant"). The same code serves CLIP and the shapes world's word tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def word_token_ids(tokenizer, word: str) -> list[int]:
    """The token ids of `word` alone, without special tokens."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"class name {word!r} encodes to no tokens")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(
            f"class name {word!r} is unknown to this text encoder's tokenizer; its vocabulary cannot name it"
        )
    return ids


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions (in the padded prompt encoding) of every occurrence of `word`'s tokens."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    sub = word_token_ids(tokenizer, word)
    # CLIP marks word ends ("</w>"), so the bare word's tokens match the word inside a sentence.
    positions = [i + k for i in range(len(ids) - len(sub) + 1) if ids[i:i + len(sub)] == sub for k in range(len(sub))]
    if not positions:
        raise ValueError(f"{word!r} does not occur in the prompt {prompt!r}")
    return positions


@torch.no_grad()
def class_embeddings(pipe, classes: Sequence[str], template: str = "a photograph of a {}") -> torch.Tensor:
    """(K, D): each class's hidden states in its own templated prompt, averaged over its tokens."""
    prompts = [template.format(c) for c in classes]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(pipe.device)
    hidden = pipe.text_encoder(ids)[0]  # (K, T, D) last_hidden_state
    out = []
    for k, (prompt, name) in enumerate(zip(prompts, classes)):
        pos = token_positions(pipe.tokenizer, prompt, name)
        out.append(hidden[k, pos].float().mean(0))
    return torch.stack(out)
