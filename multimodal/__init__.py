"""multimodal: the DeepSeek-MM CT + EMR fusion model (see the fusion model issue)."""
