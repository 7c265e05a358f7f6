"""The model library: the frozen ViLT backbone, prompt-method parts, heads, weight loading, and the Lightning
task module that trains it."""

from mdpl.modules.factory import create_model, model_for_checkpoint
from mdpl.modules.model import PromptedViLT
from mdpl.modules.task_module import TaskModule

__all__ = ["PromptedViLT", "TaskModule", "create_model", "model_for_checkpoint"]
