"""Online RL pieces: rewards (Python functions of text and reward models)."""
