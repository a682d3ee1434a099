"""Cross-cutting basics every layer may import: the user-error base, the file helpers, seeds, tensor checks.

This package imports nothing from animegen's higher layers (models, data, train, generate, evaluate,
serve, cli), and nothing heavy at module top (torch is imported inside the functions that need it), so
importing it costs nothing and can never make an import cycle.
"""
