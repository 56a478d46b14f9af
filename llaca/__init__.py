"""LLaCA Studio's ML core, no Gradio: seven sub-packages stacked in this order (a package imports
only from those before it; `tests/test_layout.py` checks it):

config -> model -> learn -> world -> groups -> serve -> worker -> bench

and two thin command lines on top, `llaca.tune` and `llaca.export`. `docs/architecture.md`
says what each owns and where to change what.
"""
