"""Tree-aware policy optimisation: advantages over rollout trees, the clipped loss, the trainer."""
