"""`usher simulate`: usher's own balancing, health, persistence, retry and limit code replayed on
virtual time against modelled backends, to compare algorithms before production does.

scenario (the file), models (modelled backends), engine (the event loop and the request path),
report (table, summary.json, plots), runner (one replay per algorithm, with a progress bar).
"""
