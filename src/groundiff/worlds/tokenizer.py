"""A word-level tokenizer for a closed world's captions, saved in transformers' format.

Stable Diffusion's CLIP tokenizer is BPE over 49k tokens; the shapes world's language has a few
dozen words, so a word-level vocabulary is exact and tiny. It is a `PreTrainedTokenizerFast`
(bos ... eos, padded to `model_max_length`), so diffusers' pipelines call it like CLIP's and
`AutoTokenizer.from_pretrained(folder)` loads it back.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_word_tokenizer(words: Iterable[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-and-punctuation-splitting word tokenizer over `words`."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
    )
