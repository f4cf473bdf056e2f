"""Bridges to other libraries: TRL's GRPOTrainer, MCP servers, Hugging Face ``datasets``.

Each module imports its library lazily or at use, so ``import trace_envs`` never needs them.
"""
