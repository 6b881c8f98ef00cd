"""
The one Klein application every route module adds its routes to.
"""

from klein import Klein


class RoutedKlein(Klein):
    """
    Klein that notes on each request which route it took, as
    C{request.devpi_route}: the endpoint (route handler) and the names of
    the rule's arguments, which tell apart the rules of one handler
    (C{/+api}, C{/<user>/+api}).  The metrics show it as the rule's URL
    pattern (L{devpi_tx.web.metrics}).
    """

    def execute_endpoint(self, endpoint, request, *args, **kwargs):
        request.devpi_route = (endpoint, tuple(kwargs))
        return super().execute_endpoint(endpoint, request, *args, **kwargs)


app = RoutedKlein()
