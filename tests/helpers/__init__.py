"""Test helpers: tiny random checkpoints in the official on-disk formats."""
