"""Serving: saved model files (safetensors + JSON), the decision threshold and scoring new images."""
