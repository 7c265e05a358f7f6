"""The data layer: tasks, Arrow files and their writers, missing tables and the missing-modality substitution,
transforms, tokenizers and batching. It imports nothing of mdpl.model, mdpl.train or mdpl.sweep."""
