"""The text tokenizer, offline.

"bert-base-uncased" is built from the bundled WordPiece vocabulary (mdpl/assets), so no network or hub
cache is needed. Any other value is taken as a local Hugging Face tokenizer folder.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BUNDLED = {"bert-base-uncased": "bert-base-uncased-vocab.txt"}


def _read_vocab(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _bert_uncased(vocab_path: Path) -> PreTrainedTokenizerFast:
    # Built from parts rather than BertTokenizer(vocab_file=...), which transformers 5 silently ignores.
    vocab = _read_vocab(vocab_path)
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )  # strip_accents=None follows lowercase, as bert-base-uncased does
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
        do_lower_case=True,
    )


@functools.lru_cache(maxsize=4)
def get_tokenizer(name_or_path: str = "bert-base-uncased") -> PreTrainedTokenizerBase:
    """The tokenizer for config["tokenizer"]: a bundled name or a local Hugging Face tokenizer folder."""
    if name_or_path in BUNDLED:
        with resources.as_file(resources.files("mdpl") / "assets" / BUNDLED[name_or_path]) as vocab:
            return _bert_uncased(vocab)
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"tokenizer={name_or_path!r}: expected one of {sorted(BUNDLED)} (bundled) "
            "or a local Hugging Face tokenizer folder; no such folder"
        )
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
