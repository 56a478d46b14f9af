"""Gradio UI of LLaCA Studio: layout, event handlers, dashboard views. No torch or SQL here."""
