"""The tokenizer works offline and gives bert-base-uncased ids."""

import hashlib
import os
import subprocess
import sys
from importlib import resources

import pytest

from mdpl.data.tokenizers import hf_tokenizer


def test_bundled_vocabulary_is_bert_base_uncased():
    vocab = (resources.files("mdpl") / "assets" / "bert-base-uncased-vocab.txt").read_bytes()
    assert hashlib.md5(vocab).hexdigest() == "64800d5d8528ce344256daf115d4965e"
    assert vocab.count(b"\n") == 30522


def test_pinned_ids():
    tok = hf_tokenizer("bert-base-uncased")
    assert tok("Hello World!")["input_ids"] == [101, 7592, 2088, 999, 102]
    assert tok.pad_token_id == 0 and tok.cls_token_id == 101 and tok.sep_token_id == 102
    assert tok.mask_token_id == 103 and tok.unk_token_id == 100
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]


def test_lower_casing_and_accent_stripping():
    tok = hf_tokenizer("bert-base-uncased")
    assert tok("HELLO Café naïve")["input_ids"] == tok("hello cafe naive")["input_ids"]


def test_padding_and_truncation_to_max_text_len():
    tok = hf_tokenizer("bert-base-uncased")
    enc = tok("a b c", padding="max_length", truncation=True, max_length=8, return_special_tokens_mask=True)
    assert enc["input_ids"] == [101, 1037, 1038, 1039, 102, 0, 0, 0]
    assert enc["attention_mask"] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert enc["special_tokens_mask"] == [1, 0, 0, 0, 1, 1, 1, 1]
    long = tok("word " * 50, padding="max_length", truncation=True, max_length=8)["input_ids"]
    assert len(long) == 8 and long[0] == 101 and long[-1] == 102
    # a missing text is the empty string: [CLS] [SEP] and pads
    assert tok("", padding="max_length", max_length=4)["input_ids"] == [101, 102, 0, 0]


@pytest.mark.slow  # starts other Python processes
def test_no_network_and_no_cache_needed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")  # any hub call would fail
    code = "from mdpl.data.tokenizers import hf_tokenizer; print(hf_tokenizer()('Hello World!')['input_ids'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[101, 7592, 2088, 999, 102]"
    assert not (tmp_path / "hf").exists()


def test_local_folder(tmp_path):
    hf_tokenizer("bert-base-uncased").save_pretrained(tmp_path / "tok")
    tok = hf_tokenizer(str(tmp_path / "tok"))
    assert tok("Hello World!")["input_ids"] == [101, 7592, 2088, 999, 102]


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        hf_tokenizer(str(tmp_path / "no-such-tokenizer"))
