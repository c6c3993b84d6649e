"""The compiled twin of ``psycancel.pq`` (module ``_pq``, built with Cython).

Import it through ``psycancel.pq``, which falls back to the ctypes twin when
this module was not built.
"""
