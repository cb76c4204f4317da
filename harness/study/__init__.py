"""Studies over many points: the equal-bytes compare, ranking statistics, fronts and BD-rate, analysis,
plots, reports, cross-model comparisons and precision re-evaluation."""
