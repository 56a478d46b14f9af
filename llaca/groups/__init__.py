"""Instruction groups: the codebook, which group a correction joins, where a new group starts, and the routed system of one adapter per group."""
