"""
Console scripts: C{devpi-tx init} and friends.
"""
