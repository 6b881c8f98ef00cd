"""
The PyPI caching mirror: upstream simple pages and files, fetched through
treq and cached in the state and the file store.
"""
