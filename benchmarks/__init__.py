"""shardemb benchmarks: run them with ``python -m benchmarks.run`` from a source checkout.

Each section lives in its own module and exposes ``run(ctx) -> dict`` (JSON-ready);
:mod:`benchmarks.run` starts Ray once, runs the sections, writes the JSON and plots, and
with ``--update-readme`` regenerates the tables of ``benchmarks/README.md``
(:mod:`benchmarks.report`).
"""
