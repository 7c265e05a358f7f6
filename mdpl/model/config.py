"""ModelConfig: everything that shapes a model or how it computes. A checkpoint stores it (inside its saved
config) and evaluation rebuilds the model from it; mdpl.train.settings builds it from the configuration and
checks every value."""

from __future__ import annotations

from dataclasses import dataclass

from mdpl.data.tasks import TASKS


@dataclass(frozen=True)
class ModelConfig:
    tasks: tuple[str, ...]
    mmimdb_class_num: int
    food101_class_num: int
    hatememes_class_num: int
    backbone: str  # "vilt" | "clip"
    prompt_method: str  # "mdpl" | "map" | "none" | "dcp"
    # MDPL
    gen_prompt_length: int
    gen_prompt_layers: tuple[int, ...]
    shared_prompt_length: int
    shared_prompt_layers: tuple[int, ...]
    mem_size: int
    top_k: int
    masked_query: bool
    fp32_similarity: bool
    # MAP (prompt_length, prompt_layers) and DCP (prompt_length, depth = len(prompt_layers))
    prompt_type: str
    learnt_p: bool
    multi_layer_prompt: bool
    prompt_length: int
    prompt_layers: tuple[int, ...]
    dcp_dynamic_prompts: str  # "official": redrawn at every build, never saved; "saved": kept in checkpoints
    dcp_masked_prompt_attention: bool
    # ViLT
    trim_text: bool
    patch_order: str
    hidden_size: int
    num_heads: int
    num_layers: int
    mlp_ratio: float
    drop_rate: float
    image_size: int
    patch_size: int
    max_text_len: int
    max_image_len: int
    vocab_size: int
    tokenizer: str
    # CLIP (heads: width // 64, as OpenAI's)
    clip_width: int
    clip_layers: int
    clip_patch_size: int
    clip_image_size: int
    clip_text_width: int
    clip_text_layers: int
    clip_context_length: int
    clip_vocab_size: int
    clip_embed_dim: int

    def num_classes(self, task: str) -> int:
        return getattr(self, TASKS[task].class_num_key)

    @property
    def text_length(self) -> int:
        """Tokens per text: max_text_len (ViLT) or the CLIP context."""
        return self.clip_context_length if self.backbone == "clip" else self.max_text_len

    @property
    def input_size(self) -> int:
        """The image size the transform produces: image_size (ViLT's shorter side) or CLIP's square."""
        return self.clip_image_size if self.backbone == "clip" else self.image_size

    @property
    def text_tokenizer(self) -> str:
        return "clip" if self.backbone == "clip" else self.tokenizer
