"""
Errors the model raises; the web layer turns each into its status code and
a C{{"message": ...}} body.
"""

from __future__ import annotations


class ModelError(Exception):
    """
    A request the model refuses, with the HTTP status that says why.
    """

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelError):
    status = 400


class Unauthorized(ModelError):
    status = 401


class Forbidden(ModelError):
    status = 403


class NotFound(ModelError):
    status = 404


class Conflict(ModelError):
    status = 409


class Gone(ModelError):
    status = 410


class TooLarge(ModelError):
    status = 413
