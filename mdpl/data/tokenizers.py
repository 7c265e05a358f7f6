"""Text tokenizers, offline: BERT WordPiece for ViLT, OpenAI's byte-level BPE for CLIP.

Both turn a list of strings into (token ids B x L, mask B x L) of a fixed length L:
- "bert-base-uncased" is built from the bundled WordPiece vocabulary (mdpl/assets); another value is a local
  Hugging Face tokenizer folder. Padded with 0 ([PAD]) and truncated to L; mask 1 on the real tokens.
- "clip" is OpenAI CLIP's tokenizer as open_clip ships it (vocabulary bundled there): ftfy text repair, HTML
  unescaped twice, whitespace collapsed, lower case; start-of-text 49406, end-of-text 49407, truncated to L with
  end-of-text as the last kept token, padded with 0. CLIP has no padding mask: its text attention is causal and
  its feature is read at end-of-text, so the mask marks the positions up to end-of-text (what the model reads).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mdpl.errors import MissingFileError

BUNDLED = {"bert-base-uncased": "bert-base-uncased-vocab.txt"}
CLIP = "clip"


def _bert_uncased(vocab_path: Path) -> PreTrainedTokenizerFast:
    # Built from parts rather than BertTokenizer(vocab_file=...), which transformers 5 silently ignores.
    with open(vocab_path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )  # strip_accents=None follows lowercase, as bert-base-uncased does
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", model_max_length=512, do_lower_case=True,
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def hf_tokenizer(name_or_path: str = "bert-base-uncased") -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer for config `tokenizer`: a bundled name or a local tokenizer folder."""
    if name_or_path in BUNDLED:
        with resources.as_file(resources.files("mdpl") / "assets" / BUNDLED[name_or_path]) as vocab:
            return _bert_uncased(vocab)
    if not Path(name_or_path).is_dir():
        raise MissingFileError(
            f"config tokenizer={name_or_path!r}: expected one of {sorted(BUNDLED)} (bundled) "
            "or a local Hugging Face tokenizer folder; no such folder"
        )
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


@functools.lru_cache(maxsize=1)
def _clip_bpe():
    import open_clip.tokenizer  # optional heavy import (open_clip loads its model zoo): only CLIP runs pay it

    return open_clip.tokenizer.SimpleTokenizer()


class TextTokenizer:
    """Strings -> (ids B x length, mask B x length), both int64; `name` is "clip" or a BERT tokenizer (above)."""

    def __init__(self, name: str, length: int) -> None:
        self.name, self.length = name, length
        if name != CLIP:
            hf_tokenizer(name)  # fail early on a bad name

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if self.name == CLIP:
            ids = _clip_bpe()(list(texts), context_length=self.length)
            # end-of-text (49407) is the largest id: argmax finds it
            mask = torch.arange(self.length)[None] <= ids.argmax(dim=1, keepdim=True)
            return ids, mask.long()
        enc = hf_tokenizer(self.name)(  # numpy, then shared: twice as fast as return_tensors="pt"
            list(texts), padding="max_length", truncation=True, max_length=self.length, return_tensors="np"
        )
        return torch.from_numpy(enc["input_ids"]).long(), torch.from_numpy(enc["attention_mask"]).long()
