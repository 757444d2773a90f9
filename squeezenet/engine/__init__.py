"""Jobs that run a model over data: predict, evaluate, train."""
