"""Noise schedules and samplers (small, pure functions over tensors)."""
