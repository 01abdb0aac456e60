"""Compatibility layers: other projects' APIs on top of ``CloudPoolExecutor``.

- ``cloudpool.compat.lithops``: Lithops' ``FunctionExecutor`` (``map``, ``call_async``,
  ``map_reduce``, ``wait``, ``get_result``, ``clean``), so a Lithops program runs on
  cloudpool with only its import line changed
  (``import cloudpool.compat.lithops as lithops``).
"""
