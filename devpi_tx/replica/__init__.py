"""
The replica side of replication: following a primary's changelog
(L{sync.ReplicaSync}) and fetching the files its entries name
(L{files.FileReplicator}), both over the one upstream client.
"""
