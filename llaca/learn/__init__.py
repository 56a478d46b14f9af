"""Learning one adapter: the dataset format, encoding, the tuner with the LLaCA EMA, evaluation and metrics."""
