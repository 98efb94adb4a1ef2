"""Training: configuration, model factory, trainer (DDP, AMP, exact resume), metrics, checkpoints, plots."""
