"""How convolution works, step by step: `python -m kern.lessons` runs the ladder of
docs/lessons/ on one real layer (steps.py: the steps the library does not keep)."""
