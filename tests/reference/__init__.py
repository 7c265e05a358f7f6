"""Slow, independent float64 references of the models (per-sample loops, explicit softmax attention,
hand-written LayerNorm, GELU and resizing, no nn.Module): each reads the weights from a state dict in the file
names (PromptedModel.official_state_dict) and is written from the documented behaviour, not from mdpl's code.
- common: the shared pieces (attention, blocks, batches, the small test recipe);
- vilt: MDPL, MAP and prompt-free on ViLT; dcp: DCP on CLIP; clip: MDPL, MAP and prompt-free on CLIP."""
