"""Human-readable results: plots (reporting.plots), tables and summaries (reporting.summary) and
feature dashboards (reporting.dashboard), written into run directories.

Nothing is imported here: the app reads `reporting.summary` at every start, and matplotlib (which
`plots` needs) took about a fifth of the start-up of a run that fails on its config.
"""
