"""Pipeline stages: each reads its inputs' directories and writes its own (distill, train, generate, evaluate,
retention), calling into engines, evaluation and analysis."""
