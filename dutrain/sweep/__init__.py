"""`dutrain sweep`: a search space over any verb's config, run as Ray Tune trials, tracked in
MLflow (one parent run, one child per trial), resumable, compared through `dutrain compare`'s
code."""
