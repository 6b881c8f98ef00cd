"""
The one Klein application every route module adds its routes to.
"""

from klein import Klein

app = Klein()
