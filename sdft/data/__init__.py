"""Training data: the dataset registry and loading (local folder, file or hub; `datasets`) and the prompt templates
(the paper's, `templates`)."""
