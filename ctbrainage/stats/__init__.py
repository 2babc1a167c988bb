"""Statistics: paired lobe tests and Table 1, evaluation of predictions, linear stacking."""
