"""LLaCA Studio ML core: models, synthetic world, continual tuning, serving. No Gradio imports."""
