"""Benchmark runner, result schema, tables, plots and HTML reports."""
