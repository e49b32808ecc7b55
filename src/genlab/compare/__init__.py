"""``genlab compare``: several models, one dataset, one budget, one evaluation, one report.

    run_compare(models, data, budget, ...)   train or reuse, evaluate, write results.json + report.html
    parse_budget("10m" | "5ep" | "300kimg")  the budget forms
    summarize(entries)                       the report's sentences, computed from the numbers
"""
from .budget import Budget, parse_budget
from .driver import CompareResult, format_results, run_compare
from .summary import summarize

__all__ = ["Budget", "CompareResult", "format_results", "parse_budget", "run_compare", "summarize"]
