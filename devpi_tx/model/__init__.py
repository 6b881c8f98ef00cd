"""
The domain: users, indexes, ACLs and validation, as plain functions over a
storage transaction.  Nothing here knows HTTP or the reactor.
"""
