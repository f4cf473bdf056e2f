"""ReAct agents, inference backends, rollout trees grown from env forks, training and the CLI."""
