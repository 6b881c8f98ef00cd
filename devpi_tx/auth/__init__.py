"""
Credentials: signed login tokens and argon2 password checks.
"""
