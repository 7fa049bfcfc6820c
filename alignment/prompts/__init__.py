"""Prompt templates: how an instruction (and optional preamble) becomes model input text."""

from alignment.prompts.templates import (
    ALPACA, GEMMA_CHAT, PromptTemplate, get_template, load_alpaca_style_template,
    template_or_none)
from alignment.prompts.library import (
    DynamicTemplate, FewShotExample, TemplateError, TemplateLibrary, TextTemplate, load_library,
    placeholders, render, resolve_template)
