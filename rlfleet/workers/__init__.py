"""Worker processes that run user code (reward functions, environments) behind one fence, for every service."""
