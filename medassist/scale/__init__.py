"""Batch engines: the pipeline's stages split for scheduling (:mod:`medassist.scale.stages`)
and the optional Ray engine (:mod:`medassist.scale.ray_engine`, imported only on demand)."""
