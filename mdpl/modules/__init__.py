"""Model code: the frozen ViLT backbone, MDPL prompts, heads, objectives and weight loading."""

from mdpl.modules.mem_prompt_module import MemPromptTransformer

__all__ = ["MemPromptTransformer"]
