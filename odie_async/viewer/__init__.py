"""``odie view``: a local web page to watch runs live, read their records and compare them."""
