"""load_path as a Hugging Face model id (owner/name): resolved from a fake hub cache laid out on disk
(HF_HUB_CACHE, HF_HUB_OFFLINE=1: the network is never touched), converted like any HF ViLT folder."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import create_model
from mdpl.model.hub import hf_cache_dir, is_hub_id, resolve_weights_path
from mdpl.model.weights import read_checkpoint
from mdpl.train.settings import Settings
from reference.common import small_config, small_hf_config

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ID = "someone/tiny-vilt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hf_state_dict() -> dict[str, torch.Tensor]:
    """A ViltModel state dict in Hugging Face naming, shaped like reference.common's SMALL model."""
    from transformers import ViltModel

    cfg = small_hf_config()
    torch.manual_seed(5)
    return {k: v.contiguous() for k, v in ViltModel(cfg).state_dict().items()}


def _fake_cache(root, repo_id: str, sd: dict, name: str = "model.safetensors") -> str:
    """The hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/<weights file>}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(snapshot / name))
    else:
        torch.save(sd, snapshot / name)
    return str(snapshot)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no relative folder someone/... exists here
    return cache


def _qkv(sd: dict, layer: int) -> torch.Tensor:
    p = f"encoder.layer.{layer}.attention.attention."
    return torch.cat([sd[p + "query.weight"], sd[p + "key.weight"], sd[p + "value.weight"]])


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_a_model_id_in_the_cache_loads_as_pretrained_weights(offline_cache, weights_file):
    sd = _hf_state_dict()
    snapshot = _fake_cache(offline_cache, REPO_ID, sd, weights_file)
    assert hf_cache_dir() == str(offline_cache)
    assert resolve_weights_path(REPO_ID) == snapshot
    model = create_model(Settings.from_config(small_config(prompt_method="none", load_path=REPO_ID)))
    own = model.official_state_dict()
    assert torch.equal(own["transformer.blocks.1.attn.qkv.weight"], _qkv(sd, 1))
    assert torch.equal(own["transformer.patch_embed.proj.weight"], sd["embeddings.patch_embeddings.projection.weight"])
    assert torch.equal(own["pooler.dense.weight"], sd["pooler.dense.weight"])
    state, saved = read_checkpoint(REPO_ID)
    assert saved == {} and torch.equal(state["pooler.dense.bias"], sd["pooler.dense.bias"])


def test_hf_home_locates_the_cache_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    snapshot = _fake_cache(tmp_path / "hf" / "hub", REPO_ID, {"pooler.dense.bias": torch.zeros(2)})
    assert resolve_weights_path(REPO_ID) == snapshot


def test_an_unknown_id_offline_is_a_clear_error(offline_cache):
    _fake_cache(offline_cache, REPO_ID, _hf_state_dict())
    config = small_config(prompt_method="none", load_path="nobody/missing-vilt")
    with pytest.raises(FileNotFoundError) as info:
        create_model(Settings.from_config(config))
    message = str(info.value)
    assert "load_path='nobody/missing-vilt'" in message
    assert "neither a local file or folder nor a Hugging Face model" in message
    assert str(offline_cache) in message and "HF_HUB_OFFLINE" in message
    assert "hf download nobody/missing-vilt" in message and "local path" in message


def test_local_paths_are_never_taken_for_model_ids(offline_cache, tmp_path):
    assert resolve_weights_path("") == ""
    assert not is_hub_id("runs/best.ckpt")  # a missing checkpoint file keeps its own error
    with pytest.raises(FileNotFoundError, match="runs/best.ckpt.*no such file"):
        read_checkpoint("runs/best.ckpt")
    # a local folder named like an id wins over the cache
    local = tmp_path / "someone" / "tiny-vilt"
    local.mkdir(parents=True)
    sd = _hf_state_dict()
    torch.save(sd, local / "pytorch_model.bin")
    _fake_cache(offline_cache, REPO_ID, {"pooler.dense.bias": torch.ones(2)})
    assert resolve_weights_path(REPO_ID) == REPO_ID
    assert torch.equal(read_checkpoint(REPO_ID)[0]["pooler.dense.bias"], sd["pooler.dense.bias"])


def test_online_a_missing_id_is_downloaded_into_the_cache(offline_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    sd = {"pooler.dense.bias": torch.arange(4.0)}
    calls = []

    def fake_download(repo_id, filename, cache_dir=None, **kwargs):  # stands in for the network
        calls.append((repo_id, filename, cache_dir))
        if filename != "pytorch_model.bin":
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return os.path.join(_fake_cache(offline_cache, repo_id, sd, filename), filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    folder = resolve_weights_path(REPO_ID)
    assert calls == [
        (REPO_ID, "model.safetensors", str(offline_cache)),
        (REPO_ID, "pytorch_model.bin", str(offline_cache)),
    ]
    assert torch.equal(read_checkpoint(folder)[0]["pooler.dense.bias"], sd["pooler.dense.bias"])
    assert resolve_weights_path(REPO_ID) == folder and len(calls) == 2  # now cached: no second download

    def no_network(repo_id, filename, cache_dir=None, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError, match=r"'nobody/x'.*downloading it failed .*network unreachable"):
        resolve_weights_path("nobody/x")
