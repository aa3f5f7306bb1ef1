"""Django migrations of the runledger app: they apply runledger's own SQL migrations."""
