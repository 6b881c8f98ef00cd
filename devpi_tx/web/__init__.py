"""
HTTP: Klein routes that parse a request, call the model and render.
"""
