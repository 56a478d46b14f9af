"""The settings: one Settings object from flags and LLACA_* variables, and the method names (no torch)."""
