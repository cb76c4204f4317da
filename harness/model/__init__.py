"""Models: the built-in Parameter Golf GPT, checkpoints, adapters for the user's own models, calibration
Gram matrices, training (plain and rate-aware) and its curve."""
