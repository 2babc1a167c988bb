"""The core layer: profiles, the run directory's layout, freshness records, atomic writes,
lobe labels, the cohort schema and worker processes. It imports nothing else from ctbrainage.
"""
