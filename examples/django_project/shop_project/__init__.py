"""The example project: a shop whose orders are confirmed and receipted by runledger jobs."""
