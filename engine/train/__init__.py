"""Training recipes. Checkpoints are safetensors plus JSON: never pickles."""
