class DataError(ValueError):
    """Bad input data. str(err) is one line naming the file and the offending value."""
