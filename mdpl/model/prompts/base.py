"""What a prompt method tells the model loop (mdpl.model.model.run_blocks).

A method owns its parameters and, for each stream of the backbone (see mdpl.model.stream):
- `prepare(missing_type, streams)`: whatever it computes once per forward, before any block (a dict);
- `edit_layers(stream)`: the blocks before which it changes the sequence, and `edit(stream, layer, state)`
  then sets the sides' prompt regions (the current hidden states of the tokens and regions are there to read);
- `prefix_kv(stream, layer, state)`: unprojected keys and values put in front of that block's attention;
- `pad_reads(stream)`: the last layer whose `edit` reads padded tokens (0: none after layer 0), so that the
  loop drops them from then on when it prunes.
The default is the prompt-free model.
"""

from __future__ import annotations

from torch import Tensor, nn

from mdpl.model.config import ModelConfig
from mdpl.model.stream import Stream


class PromptMethod(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: dict[str, dict[str, int]]) -> None:
        """layout: stream name -> {side name: width} of the backbone (mdpl.model.vilt / clip)."""
        super().__init__()

    def prepare(self, missing_type: Tensor, streams: list[Stream]) -> dict:
        return {}

    def edit_layers(self, stream: str) -> tuple[int, ...]:
        return ()

    def edit(self, stream: Stream, layer: int, state: dict) -> None:
        pass

    def prefix_kv(self, stream: str, layer: int, state: dict) -> tuple[Tensor, Tensor] | None:
        return None

    def pad_reads(self, stream: str) -> int:
        return 0


class NoPrompts(PromptMethod):
    """The frozen backbone alone ("none"): only the heads and the backbone's trainable tail learn."""
