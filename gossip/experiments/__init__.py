"""The experiment that answers the question: plans, baselines, ensembles, analysis, reports, benches."""
