"""ui: the Gradio clinician review app (see the UI issue)."""
