"""mdpl: memory-driven prompt learning for ViLT under missing modalities."""

__version__ = "0.1.0"
