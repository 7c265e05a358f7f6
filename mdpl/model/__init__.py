"""The model layer: ModelConfig, the ViLT and CLIP backbones, the prompt methods, the one model loop, heads, and
weights (reading, converters, factories). It imports nothing of mdpl.train or mdpl.sweep."""
