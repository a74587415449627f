"""diffgemma-ls: inline code completion and infilling from a local DiffusionGemma model."""

__version__ = "0.1.0"
