"""Diffusion UNets of the public implementations, written for this project."""
