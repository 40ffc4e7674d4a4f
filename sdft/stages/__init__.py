"""Pipeline stages: distill, train, evaluate, analyse, report."""
