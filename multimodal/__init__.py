"""multimodal: the DeepSeek-MM CT + EMR fusion model (issue 4).

Plain numpy / torch inputs only: this package imports neither ``medassist``, ``ui`` nor
``dicom_io``.  Nothing is loaded at import time.  Main entry points:

* :class:`multimodal.config.ModelConfig` / :func:`multimodal.config.load_model_config`;
* :class:`multimodal.model.FusionModel` (and :class:`multimodal.baseline.LateFusionModel`);
* :mod:`multimodal.transforms` - MONAI-style array and dictionary transforms;
* :class:`multimodal.tokenizer.WordTokenizer` - deterministic word-level tokenizer;
* :mod:`multimodal.checkpoint` - safetensors checkpoints with config and vocabulary.
"""

from __future__ import annotations

__all__: list[str] = []
