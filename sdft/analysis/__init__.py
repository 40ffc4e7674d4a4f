"""Everything that turns saved scores into conclusions: statistics (`stats`), the experiment's `summary.json`
(`summary`), distribution shift (`shift`), the report and its figures (`report`, which only renders the summary) and
the paper's reference numbers (`paper_numbers`)."""
