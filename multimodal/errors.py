"""Typed errors of the multimodal package; all derive from :class:`MultimodalError`."""

from __future__ import annotations


class MultimodalError(Exception):
    """Root of every error raised by :mod:`multimodal`."""


class ModelConfigError(MultimodalError, ValueError):
    """An invalid model configuration value or file."""


class ShapeError(MultimodalError, ValueError):
    """A tensor or array has the wrong shape or dtype."""


class ModalityError(MultimodalError, ValueError):
    """A modality is unknown, missing where required, or inconsistent across inputs."""


class TokenizerError(MultimodalError, ValueError):
    """The tokenizer vocabulary is invalid or does not match the model."""


class CheckpointError(MultimodalError, ValueError):
    """A checkpoint is missing files or does not match the model configuration."""
