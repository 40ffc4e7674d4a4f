"""Everything that turns a model's outputs into a score: the benchmark registry (`benchmarks`), the task checks shared
with distillation's selection (`checks`), lm-eval's knowledge tasks (`knowledge`), IFEval (`ifeval`), the pairwise
judge (`judge`), the code sandbox (`sandbox`) and the log-likelihood measures (`likelihood`)."""
