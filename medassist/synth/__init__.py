"""Synthetic CT + EMR + reference-report case generator (issue 3).

Nothing is loaded at import time.  Entry points:

* :func:`medassist.synth.case.make_case` - sample one case (anatomy, findings, EMR, report);
* :func:`medassist.synth.case.write_case` - write it as DICOM + EMR + FHIR + truth files;
* :func:`medassist.synth.fast_path.render_tensor` - the same phantom at the model input grid;
* :mod:`medassist.synth.cli` - ``medassist synth OUT --cases N --seed S``.
"""

from __future__ import annotations

__all__: list[str] = []
