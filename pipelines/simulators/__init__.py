"""Data sources for demos, tests and benchmarks, all written in the store's own contracts.

``marketplace`` is the fast demo world (``appsim simulate``), ``world`` the taxonomy world that
separates methods in the quality bench, ``experiment`` A/B traffic through the serving router, and
``movielens`` a real public dataset converted to the same layout.
"""
