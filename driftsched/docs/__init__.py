"""`driftsched docs`: the generated configuration reference and the results included in the pages."""
