"""
Talking to other servers, always through treq: uploads to an external
index (push), and later mirror fetching and replication.
"""
