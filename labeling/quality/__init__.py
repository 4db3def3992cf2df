"""Quality statistics of the judgements (issue #10): pure numpy, no Django, fed flat arrays by the selectors."""
