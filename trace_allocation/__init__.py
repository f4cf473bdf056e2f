"""TRACE rollout-budget allocation: pure numpy/torch, no knowledge of envs or LLM servers."""
