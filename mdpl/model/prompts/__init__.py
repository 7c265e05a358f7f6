"""The prompt-method registry: config prompt_method -> its PromptMethod (see base.py for the interface)."""

from mdpl.model.prompts.base import NoPrompts, PromptMethod
from mdpl.model.prompts.dcp import DCPPrompts
from mdpl.model.prompts.map import MAPPrompts
from mdpl.model.prompts.mdpl import MDPLPrompts

PROMPT_METHODS: dict[str, type[PromptMethod]] = {
    "mdpl": MDPLPrompts,
    "map": MAPPrompts,
    "none": NoPrompts,
    "dcp": DCPPrompts,
}

__all__ = ["PROMPT_METHODS", "PromptMethod"]
